// CPU binding of qmagface_epilogue (qme/quality_ops.h).
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/quality_ops.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_qmagface_epilogue(py::module_& m) {
  m.def("qmagface_epilogue",
        [](py::tuple cos, uintptr_t q_probe, uintptr_t q_gallery, double alpha, double beta,
           py::tuple out) {
          qme::MatrixView o = matrix_from(out, "out");
          qme::QMagFaceEpilogueArgs a{matrix_from(cos, "cos"), ptr<const double>(q_probe),
                                      ptr<const double>(q_gallery), alpha, beta,
                                      qme::MutableMatrixView{const_cast<void*>(o.data), o.dtype,
                                                             o.rows, o.cols, o.stride_row,
                                                             o.stride_col}};
          py::gil_scoped_release nogil;
          qme::qmagface_epilogue_cpu(a, qme_py::cpu_threads());
        });
}

const qme_py::Register registered(register_qmagface_epilogue);

}  // namespace
