// CUDA binding of qmagface_epilogue: the CPU binding's argument tuple (device addresses) plus
// the stream as an int (0 = legacy default stream). No workspace; only enqueues work.
#define QME_QUALITY_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../quality_bind.h"
#include "../registry.h"
#include "qme/ops_cuda.h"

namespace py = pybind11;

namespace {

void register_qmagface_epilogue_cuda(py::module_& m) {
  m.def("qmagface_epilogue", [](py::tuple t, uintptr_t stream) {
    const qme::QMagFaceEpilogueArgs a = qme_py::qmagface_epilogue_args(t);
    py::gil_scoped_release nogil;
    qme::qmagface_epilogue_cuda(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_qmagface_epilogue_cuda);

}  // namespace
