// CUDA twins of the ops in ops.h: same argument blocks (all pointers are device
// pointers), plus a caller-provided device workspace and the stream to run on.
// Kernels never allocate and never look up a stream; every CUDA call is checked
// and failures throw std::runtime_error with the call site.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "qme/ops.h"

namespace qme {

// Bytes of device workspace each op needs for the given argument block.
size_t rank_counts_cuda_workspace(const RankCountsArgs& args);
size_t key_histogram_cuda_workspace(const KeyHistogramArgs& args);
size_t openset_stats_cuda_workspace(const OpensetStatsArgs& args);

void rank_counts_cuda(const RankCountsArgs& args, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);
void key_histogram_cuda(const KeyHistogramArgs& args, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);
void openset_stats_cuda(const OpensetStatsArgs& args, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

}  // namespace qme
