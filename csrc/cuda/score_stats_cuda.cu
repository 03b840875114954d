// CUDA twin of score_stats (score_stats_cpu.cpp): one block per part (16-row x
// 32768-column tile, qme/score_stats.h); thread l is lane l (its columns of the
// tile), the block merges the lanes in the fixed tree and writes the partial to the
// workspace; one more block merges the partials (contiguous ranges per thread, then
// the same tree). The decomposition is the CPU twin's: bitwise the CPU result.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops.h"  // check_matrix
#include "qme/score_stats.h"

namespace qme {
namespace {

constexpr int kThreads = kStatsLanes;
using stats_detail::Moments;

struct Layout {
  int64_t chunks, slices;
  int64_t parts() const { return chunks * slices; }
};

Layout layout_of(const ScoreStatsArgs& a) {
  return Layout{stats_chunks(a.scores.rows), stats_slices(a.scores.cols)};
}

// The block's moments, merged over its threads in a fixed tree; valid in thread 0.
__device__ void block_merge(Moments* s_all, Moments* s_gen, Moments all, Moments gen) {
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
}

template <DType D>
__global__ void __launch_bounds__(kThreads) part_kernel(ScoreStatsArgs a, Layout l,
                                                        double* partials) {
  __shared__ Moments s_all[kThreads], s_gen[kThreads];
  const int64_t part = blockIdx.x;  // chunk-major: part = chunk * slices + slice
  Moments all = stats_detail::empty_moments(), gen = stats_detail::empty_moments();
  stats_detail::lane_moments<D>(a, part, l.slices, static_cast<int>(threadIdx.x), all, gen);
  block_merge(s_all, s_gen, all, gen);
  if (threadIdx.x == 0) {
    stats_detail::write_moments(partials + part * 10, s_all[0]);
    stats_detail::write_moments(partials + part * 10 + 5, s_gen[0]);
  }
}

// One block: thread t merges the partials [t * per, (t + 1) * per) in order, then the tree.
__global__ void __launch_bounds__(kThreads) merge_kernel(const double* partials, int64_t parts,
                                                         double* out) {
  __shared__ Moments s_all[kThreads], s_gen[kThreads];
  const int64_t per = (parts + kThreads - 1) / kThreads;
  const int64_t b = threadIdx.x * per, e = std::min<int64_t>(b + per, parts);
  Moments all = stats_detail::empty_moments(), gen = stats_detail::empty_moments();
  for (int64_t p = b; p < e; ++p) {
    all = stats_detail::merge(all, stats_detail::read_moments(partials + p * 10));
    gen = stats_detail::merge(gen, stats_detail::read_moments(partials + p * 10 + 5));
  }
  block_merge(s_all, s_gen, all, gen);
  if (threadIdx.x == 0) {
    stats_detail::write_moments(out, s_all[0]);
    stats_detail::write_moments(out + 5, s_gen[0]);
  }
}

}  // namespace

size_t score_stats_cuda_workspace(const ScoreStatsArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.scores.rows == 0 || a.scores.cols == 0) return 0;
  return static_cast<size_t>(layout_of(a).parts()) * 10 * sizeof(double);
}

void score_stats_cuda(const ScoreStatsArgs& a, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  check_score_stats_args(a);
  if (a.scores.rows == 0 || a.scores.cols == 0) {  // no entry: the merge writes empty moments
    merge_kernel<<<1, kThreads, 0, stream>>>(nullptr, 0, a.out);
    QME_CUDA_CHECK_LAUNCH();
    return;
  }
  const Layout l = layout_of(a);
  if (l.parts() > 0x7FFFFFFF) throw InvalidArgument("score_stats: matrix too large for one launch");
  const size_t need = score_stats_cuda_workspace(a);
  if (workspace == nullptr || workspace_bytes < need)
    throw InvalidArgument("workspace: score_stats needs " + std::to_string(need) + " bytes");
  double* partials = static_cast<double*>(workspace);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    part_kernel<D><<<static_cast<unsigned>(l.parts()), kThreads, 0, stream>>>(a, l, partials);
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
  merge_kernel<<<1, kThreads, 0, stream>>>(partials, l.parts(), a.out);
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace qme
