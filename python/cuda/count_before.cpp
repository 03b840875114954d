// CUDA binding of count_before (qme/count_before.h): device addresses plus
// (workspace address, workspace bytes, cudaStream_t as an int). Only enqueues work.
#define QME_COUNT_BEFORE_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/count_before.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_count_before_cuda(py::module_& m) {
  m.def("count_before_workspace", [](py::tuple scores, int64_t col_offset, int64_t max_queries) {
    // Sizing only: no pointer is read.
    qme::CountBeforeArgs a{matrix_from(scores, "scores"), col_offset, nullptr, nullptr, nullptr,
                           max_queries, nullptr};
    return qme::count_before_cuda_workspace(a);
  });
  m.def("count_before", [](py::tuple scores, int64_t col_offset, uintptr_t offsets, uintptr_t keys,
                           uintptr_t cols, int64_t max_queries, uintptr_t counts,
                           uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
    qme::CountBeforeArgs a{matrix_from(scores, "scores"), col_offset, ptr<const int64_t>(offsets),
                           ptr<const uint64_t>(keys), ptr<const int64_t>(cols), max_queries,
                           ptr<int64_t>(counts)};
    py::gil_scoped_release nogil;
    qme::count_before_cuda(a, ptr<void>(workspace), workspace_bytes,
                           reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_count_before_cuda);

}  // namespace
