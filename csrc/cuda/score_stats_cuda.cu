// CUDA twin of score_stats (score_stats_cpu.cpp): one block per fixed row chunk;
// each thread accumulates its columns of the chunk, the block merges the threads'
// moments in a fixed tree and writes the chunk's partial to the workspace; a
// second one-thread kernel merges the partials in chunk order. Deterministic.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops.h"  // check_matrix
#include "qme/score_stats.h"

namespace qme {
namespace {

constexpr int kThreads = 256;
using stats_detail::Moments;

template <DType D>
__global__ void __launch_bounds__(kThreads) chunk_kernel(ScoreStatsArgs a, double* partials) {
  __shared__ Moments s_all[kThreads], s_gen[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t r0 = c * kStatsChunkRows;
  const int64_t r1 = r0 + kStatsChunkRows < a.scores.rows ? r0 + kStatsChunkRows : a.scores.rows;
  Moments all = stats_detail::empty_moments(), gen = stats_detail::empty_moments();
  stats_detail::chunk_moments<D>(a, r0, r1, threadIdx.x, kThreads, all, gen);
  s_all[threadIdx.x] = all;
  s_gen[threadIdx.x] = gen;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      s_all[threadIdx.x] = stats_detail::merge(s_all[threadIdx.x], s_all[threadIdx.x + s]);
      s_gen[threadIdx.x] = stats_detail::merge(s_gen[threadIdx.x], s_gen[threadIdx.x + s]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    stats_detail::write_moments(partials + c * 10, s_all[0]);
    stats_detail::write_moments(partials + c * 10 + 5, s_gen[0]);
  }
}

__global__ void merge_kernel(const double* partials, int64_t chunks, double* out) {
  Moments all = stats_detail::empty_moments(), gen = stats_detail::empty_moments();
  for (int64_t c = 0; c < chunks; ++c) {
    all = stats_detail::merge(all, stats_detail::read_moments(partials + c * 10));
    gen = stats_detail::merge(gen, stats_detail::read_moments(partials + c * 10 + 5));
  }
  stats_detail::write_moments(out, all);
  stats_detail::write_moments(out + 5, gen);
}

int64_t num_chunks(const ScoreStatsArgs& a) {
  return (a.scores.rows + kStatsChunkRows - 1) / kStatsChunkRows;
}

}  // namespace

size_t score_stats_cuda_workspace(const ScoreStatsArgs& a) {
  check_matrix(a.scores, "scores");
  return static_cast<size_t>(num_chunks(a)) * 10 * sizeof(double);
}

void score_stats_cuda(const ScoreStatsArgs& a, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  check_score_stats_args(a);
  const int64_t chunks = num_chunks(a);
  if (chunks == 0 || a.scores.cols == 0) {  // no entry: the empty moments
    double host[10];
    stats_detail::write_moments(host, stats_detail::empty_moments());
    stats_detail::write_moments(host + 5, stats_detail::empty_moments());
    QME_CUDA_CHECK(cudaMemcpyAsync(a.out, host, sizeof(host), cudaMemcpyHostToDevice, stream));
    QME_CUDA_CHECK(cudaStreamSynchronize(stream));  // `host` dies with this frame
    return;
  }
  if (chunks > 0x7FFFFFFF) throw InvalidArgument("score_stats: too many rows for one launch");
  if (workspace == nullptr || workspace_bytes < score_stats_cuda_workspace(a))
    throw InvalidArgument("workspace: score_stats needs " +
                          std::to_string(score_stats_cuda_workspace(a)) + " bytes");
  double* partials = static_cast<double*>(workspace);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    chunk_kernel<D><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(a, partials);
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
  merge_kernel<<<1, 1, 0, stream>>>(partials, chunks, a.out);
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace qme
