// CUDA binding of qmagface_epilogue: device addresses plus the stream as an int
// (0 = legacy default stream). No workspace. Only enqueues work.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/ops_cuda.h"
#define QME_QUALITY_WITH_CUDA 1
#include "qme/quality_ops.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_qmagface_epilogue_cuda(py::module_& m) {
  m.def("qmagface_epilogue",
        [](py::tuple cos, uintptr_t q_probe, uintptr_t q_gallery, double alpha, double beta,
           py::tuple out, uintptr_t stream) {
          qme::MatrixView o = matrix_from(out, "out");
          qme::QMagFaceEpilogueArgs a{matrix_from(cos, "cos"), ptr<const double>(q_probe),
                                      ptr<const double>(q_gallery), alpha, beta,
                                      qme::MutableMatrixView{const_cast<void*>(o.data), o.dtype,
                                                             o.rows, o.cols, o.stride_row,
                                                             o.stride_col}};
          py::gil_scoped_release nogil;
          qme::qmagface_epilogue_cuda(a, reinterpret_cast<cudaStream_t>(stream));
        });
}

const qme_py::Register registered(register_qmagface_epilogue_cuda);

}  // namespace
