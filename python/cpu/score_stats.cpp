// CPU binding of score_stats (qme/score_stats.h); the argument tuple is decoded by
// score_stats_bind.h, shared with the CUDA binding.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "../score_stats_bind.h"

namespace py = pybind11;

namespace {

void register_score_stats(py::module_& m) {
  m.def("score_stats", [](py::tuple t) {
    const qme::ScoreStatsArgs a = qme_py::score_stats_args(t);
    py::gil_scoped_release nogil;
    qme::score_stats_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_score_stats);

}  // namespace
