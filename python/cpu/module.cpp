// qme_ext._C: the CPU kernels. Op bindings live in the other files of this
// folder and register themselves (python/registry.h).
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "../bind_common.h"
#include "../registry.h"

namespace py = pybind11;

namespace qme_py {
namespace {

int default_threads() {
  if (const char* env = std::getenv("QME_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

int g_threads = default_threads();

}  // namespace

int cpu_threads() { return g_threads; }

}  // namespace qme_py

PYBIND11_MODULE(_C, m) {
  m.doc() = "qme_ext CPU kernels (internal; use qme_ext.metrics and friends)";
  qme_py::register_errors(m);
  m.def("get_num_threads", [] { return qme_py::g_threads; });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw qme::InvalidArgument("num_threads: expected >= 1, got " + std::to_string(n));
    qme_py::g_threads = n;
  });
  for (auto r : qme_py::registrars()) r(m);
}
