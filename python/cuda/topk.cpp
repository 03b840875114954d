// CUDA binding of topk (qme/topk.h): device addresses plus (workspace address,
// workspace bytes, cudaStream_t as an int). Only enqueues work.
#define QME_TOPK_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/topk.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_topk_cuda(py::module_& m) {
  m.def("topk_workspace", [](py::tuple scores, int64_t k, bool largest) {
    // Sizing only: the output pointers are never read.
    qme::TopkArgs a{matrix_from(scores, "scores"), k, largest, nullptr, nullptr};
    return qme::topk_cuda_workspace(a);
  });
  m.def("topk", [](py::tuple scores, int64_t k, bool largest, uintptr_t values, uintptr_t indices,
                   uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
    qme::TopkArgs a{matrix_from(scores, "scores"), k, largest, ptr<void>(values),
                    ptr<int64_t>(indices)};
    py::gil_scoped_release nogil;
    qme::topk_cuda(a, ptr<void>(workspace), workspace_bytes, reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_topk_cuda);

}  // namespace
