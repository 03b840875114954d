// qme_ext._C_cuda: the CUDA kernels. Op bindings live in the other files of this
// folder and register themselves (python/registry.h); this file holds the
// module-level queries about the CUDA runtime it was linked with.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "../bind_common.h"
#include "../registry.h"

#ifndef QME_CUDA_ARCHITECTURES
#define QME_CUDA_ARCHITECTURES ""
#endif

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "qme_ext CUDA kernels (internal; use qme_ext.metrics and friends)";
  qme_py::register_errors(m);
  m.attr("architectures") = QME_CUDA_ARCHITECTURES;

  // A machine without a driver or GPU is a normal situation for a wheel built
  // with CUDA, so report 0 devices rather than raising.
  m.def("device_count", [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return n;
  });
  m.def("runtime_version", [] {
    int v = 0;
    const cudaError_t err = cudaRuntimeGetVersion(&v);
    if (err != cudaSuccess)
      throw std::runtime_error(std::string("cudaRuntimeGetVersion: ") + cudaGetErrorString(err));
    return v;
  });
  for (auto r : qme_py::registrars()) r(m);
}
