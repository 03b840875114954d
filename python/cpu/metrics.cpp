// CPU bindings of the metric kernels: rank_counts, key_histogram, openset_stats.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/ops.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_metrics(py::module_& m) {
  m.def("rank_counts",
        [](py::tuple scores, uintptr_t offsets, uintptr_t index, uintptr_t flags, int num_modes,
           int64_t max_candidates, uintptr_t first_pos, uintptr_t ap, uintptr_t num_good,
           uintptr_t last_pos, uintptr_t r_hits, uintptr_t map_r) {
          qme::RankCountsArgs a{matrix_from(scores, "scores"), ptr<const int64_t>(offsets),
                                ptr<const int64_t>(index), ptr<const uint8_t>(flags), num_modes,
                                max_candidates,
                                ptr<int64_t>(first_pos), ptr<double>(ap), ptr<int64_t>(num_good),
                                ptr<int64_t>(last_pos), ptr<int64_t>(r_hits), ptr<double>(map_r)};
          py::gil_scoped_release nogil;
          qme::rank_counts_cpu(a, qme_py::cpu_threads());
        });

  m.def("key_histogram",
        [](py::tuple scores, int digit_shift, int digit_bits, int num_prefixes, uintptr_t prefixes,
           int prefix_shift, uint64_t nan_key, uintptr_t hist, uintptr_t nan_count,
           uintptr_t min_key, uintptr_t max_key) {
          qme::KeyHistogramArgs a{matrix_from(scores, "scores"), digit_shift, digit_bits,
                                  num_prefixes, ptr<const uint64_t>(prefixes), prefix_shift,
                                  nan_key, ptr<int64_t>(hist), ptr<int64_t>(nan_count),
                                  ptr<uint64_t>(min_key), ptr<uint64_t>(max_key)};
          py::gil_scoped_release nogil;
          qme::key_histogram_cpu(a, qme_py::cpu_threads());
        });

  m.def("openset_stats",
        [](py::tuple scores, uintptr_t genuine_col, uintptr_t enrolled, int num_splits,
           uintptr_t max_other, uintptr_t num_ge, uintptr_t nonfinite) {
          qme::OpensetStatsArgs a{matrix_from(scores, "merge_scores"), ptr<const int64_t>(genuine_col),
                                  ptr<const uint8_t>(enrolled), num_splits,
                                  ptr<double>(max_other), ptr<int64_t>(num_ge),
                                  ptr<int64_t>(nonfinite)};
          py::gil_scoped_release nogil;
          qme::openset_stats_cpu(a, qme_py::cpu_threads());
        });
}

const qme_py::Register registered(register_metrics);

}  // namespace
