// CUDA binding of score_stats: the CPU binding's argument tuple (device addresses)
// plus (workspace address, workspace bytes, stream as an int), and the workspace size.
#define QME_SCORE_STATS_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "../score_stats_bind.h"

namespace py = pybind11;

namespace {

void register_score_stats_cuda(py::module_& m) {
  m.def("score_stats_workspace", [](py::tuple scores) {
    return qme::score_stats_cuda_workspace(
        qme::ScoreStatsArgs{qme_py::matrix_from(scores, "scores"), nullptr, nullptr, nullptr});
  });
  m.def("score_stats", [](py::tuple t, uintptr_t workspace, size_t workspace_bytes,
                          uintptr_t stream) {
    const qme::ScoreStatsArgs a = qme_py::score_stats_args(t);
    py::gil_scoped_release nogil;
    qme::score_stats_cuda(a, qme_py::ptr<void>(workspace), workspace_bytes,
                          reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_score_stats_cuda);

}  // namespace
