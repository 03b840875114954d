// Argument decoding shared by the CPU and CUDA bindings of score_stats.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind_common.h"
#include "qme/score_stats.h"

namespace qme_py {

// (scores matrix, q_pids address or 0, g_pids address or 0, out address)
inline qme::ScoreStatsArgs score_stats_args(const pybind11::tuple& t) {
  expect_tuple(t, 4, "score_stats arguments");
  return qme::ScoreStatsArgs{matrix_from(t[0].cast<pybind11::tuple>(), "scores"),
                             ptr<const int64_t>(t[1].cast<uintptr_t>()),
                             ptr<const int64_t>(t[2].cast<uintptr_t>()),
                             ptr<double>(t[3].cast<uintptr_t>())};
}

}  // namespace qme_py
