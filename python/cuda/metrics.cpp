// CUDA bindings of the metric kernels: rank_counts, key_histogram, openset_stats,
// and the workspace size of each. Same arguments as the CPU bindings (device
// addresses) plus (workspace address, workspace bytes, cudaStream_t as an int,
// 0 = legacy default stream). Ops only enqueue work: the Python layer orders
// and synchronises the stream.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/ops_cuda.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

cudaStream_t stream_from(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void register_metrics_cuda(py::module_& m) {
  // ---- workspace sizes: argument blocks with only the sizing fields set ----
  m.def("rank_counts_workspace", [](py::tuple scores, int num_modes, int64_t max_candidates) {
    qme::RankCountsArgs a{matrix_from(scores, "scores"), nullptr, nullptr, nullptr, num_modes,
                          max_candidates, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    return qme::rank_counts_cuda_workspace(a);
  });
  m.def("key_histogram_workspace", [](py::tuple scores, int digit_bits, int num_prefixes) {
    // digit_shift 0 and a dummy prefix buffer satisfy the argument checks;
    // neither changes the size.
    static const uint64_t dummy_prefix = 0;
    qme::KeyHistogramArgs a{matrix_from(scores, "scores"), 0, digit_bits, num_prefixes,
                            &dummy_prefix, digit_bits, 0, nullptr, nullptr, nullptr, nullptr};
    return qme::key_histogram_cuda_workspace(a);
  });
  m.def("openset_stats_workspace", [](py::tuple scores, int num_splits) {
    qme::OpensetStatsArgs a{matrix_from(scores, "merge_scores"), nullptr, nullptr, num_splits,
                            nullptr, nullptr, nullptr};
    return qme::openset_stats_cuda_workspace(a);
  });

  // ---- ops ----------------------------------------------------------------
  m.def("rank_counts",
        [](py::tuple scores, uintptr_t offsets, uintptr_t index, uintptr_t flags, int num_modes,
           int64_t max_candidates, uintptr_t first_pos, uintptr_t ap, uintptr_t num_good,
           uintptr_t last_pos, uintptr_t r_hits, uintptr_t map_r, uintptr_t workspace,
           size_t workspace_bytes, uintptr_t stream) {
          qme::RankCountsArgs a{matrix_from(scores, "scores"), ptr<const int64_t>(offsets),
                                ptr<const int64_t>(index), ptr<const uint8_t>(flags), num_modes,
                                max_candidates,
                                ptr<int64_t>(first_pos), ptr<double>(ap), ptr<int64_t>(num_good),
                                ptr<int64_t>(last_pos), ptr<int64_t>(r_hits), ptr<double>(map_r)};
          py::gil_scoped_release nogil;
          qme::rank_counts_cuda(a, ptr<void>(workspace), workspace_bytes, stream_from(stream));
        });

  m.def("key_histogram",
        [](py::tuple scores, int digit_shift, int digit_bits, int num_prefixes, uintptr_t prefixes,
           int prefix_shift, uint64_t nan_key, uintptr_t hist, uintptr_t nan_count,
           uintptr_t min_key, uintptr_t max_key, uintptr_t workspace, size_t workspace_bytes,
           uintptr_t stream) {
          qme::KeyHistogramArgs a{matrix_from(scores, "scores"), digit_shift, digit_bits,
                                  num_prefixes, ptr<const uint64_t>(prefixes), prefix_shift,
                                  nan_key, ptr<int64_t>(hist), ptr<int64_t>(nan_count),
                                  ptr<uint64_t>(min_key), ptr<uint64_t>(max_key)};
          py::gil_scoped_release nogil;
          qme::key_histogram_cuda(a, ptr<void>(workspace), workspace_bytes, stream_from(stream));
        });

  m.def("openset_stats",
        [](py::tuple scores, uintptr_t genuine_col, uintptr_t enrolled, int num_splits,
           uintptr_t max_other, uintptr_t num_ge, uintptr_t nonfinite, uintptr_t workspace,
           size_t workspace_bytes, uintptr_t stream) {
          qme::OpensetStatsArgs a{matrix_from(scores, "merge_scores"),
                                  ptr<const int64_t>(genuine_col), ptr<const uint8_t>(enrolled),
                                  num_splits, ptr<double>(max_other), ptr<int64_t>(num_ge),
                                  ptr<int64_t>(nonfinite)};
          py::gil_scoped_release nogil;
          qme::openset_stats_cuda(a, ptr<void>(workspace), workspace_bytes, stream_from(stream));
        });
}

const qme_py::Register registered(register_metrics_cuda);

}  // namespace
