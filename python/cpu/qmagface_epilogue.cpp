// CPU binding of qmagface_epilogue (qme/quality_ops.h); its argument tuple is decoded by
// quality_bind.h, shared with the CUDA binding.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../quality_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_qmagface_epilogue(py::module_& m) {
  m.def("qmagface_epilogue", [](py::tuple t) {
    const qme::QMagFaceEpilogueArgs a = qme_py::qmagface_epilogue_args(t);
    py::gil_scoped_release nogil;
    qme::qmagface_epilogue_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_qmagface_epilogue);

}  // namespace
