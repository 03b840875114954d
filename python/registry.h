// Each binding source registers its functions from a static initializer, so a
// new op adds one file under python/cpu/ (or python/cuda/) and touches nothing
// else. The module's init function runs every registrar.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace qme_py {

using Registrar = void (*)(pybind11::module_&);

inline std::vector<Registrar>& registrars() {
  static std::vector<Registrar> all;
  return all;
}

struct Register {
  explicit Register(Registrar r) { registrars().push_back(r); }
};

// Threads used by the CPU kernels (python/cpu/module.cpp owns the setting).
int cpu_threads();

}  // namespace qme_py
