// score_stats: the statistics the fusion normalisers are fitted from (docs/definitions.rst, §3), in one
// pass over a score matrix: count, mean, sum of squared deviations (M2), min and max
// of all entries and of the genuine ones (probe id == gallery id, decided on the fly
// from the id vectors, never a P x G mask). Scores are cleaned like np.nan_to_num
// first (NaN -> 0, +-inf -> +-FLT_MAX), as the normalisers see them.
//
// One fixed decomposition, shared by both twins, so the CPU and CUDA results are bit
// for bit the same and depend neither on the thread count nor on the launch:
//  * parts: tiles of kStatsChunkRows rows x kStatsSliceCols columns, numbered
//    chunk-major (part = chunk * slices + slice);
//  * lanes: in a part, lane l (0 <= l < kStatsLanes) accumulates (Welford) the
//    columns j0 + l, j0 + l + kStatsLanes, ... of each row, rows in order (a CUDA
//    thread; the CPU keeps kStatsLanes accumulators);
//  * a part's lanes are merged by tree_merge (pairs (t, t + s), s = kStatsLanes/2 .. 1);
//  * the parts: lane l merges parts [l * per, (l + 1) * per) in order,
//    per = ceil(parts / kStatsLanes), then tree_merge.
// Merges use Chan et al.'s update with every operation rounded on its own (_rn on
// CUDA, -ffp-contract=off on the CPU; division and sqrt are IEEE on both).
// Signed zeros: -0.0 ties +0.0 as in the ranking order, so a zero is counted as +0.0
// and a zero min or max is +0.0 whatever the order of the data.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qme/common.h"
#include "qme/fuse_scores.h"  // fuse_detail::nan_to_num

#if defined(__CUDACC__) || defined(QME_SCORE_STATS_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

constexpr int64_t kStatsChunkRows = 16;
constexpr int64_t kStatsSliceCols = 32768;
constexpr int kStatsLanes = 256;  // the CUDA block size

// The parts of a (P, G) matrix: (chunks, slices); parts = chunks * slices.
QME_HD int64_t stats_chunks(int64_t P) { return (P + kStatsChunkRows - 1) / kStatsChunkRows; }
QME_HD int64_t stats_slices(int64_t G) { return (G + kStatsSliceCols - 1) / kStatsSliceCols; }

struct ScoreStatsArgs {
  // inputs
  MatrixView scores;       // (P, G) any float dtype, any strides
  const int64_t* q_pids;   // (P,) or null: no genuine statistics
  const int64_t* g_pids;   // (G,) or null
  // outputs
  double* out;             // (2, 5): [all, genuine] x [count, mean, m2, min, max]
};

void check_score_stats_args(const ScoreStatsArgs& args);
void score_stats_cpu(const ScoreStatsArgs& args, int num_threads);
#if defined(__CUDACC__) || defined(QME_SCORE_STATS_WITH_CUDA)
size_t score_stats_cuda_workspace(const ScoreStatsArgs& args);
void score_stats_cuda(const ScoreStatsArgs& args, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);
#endif

namespace stats_detail {

// Welford moments of a set of values; merge() is Chan et al.'s pairwise update.
struct Moments {
  double n, mean, m2, lo, hi;
};

QME_HD Moments empty_moments() { return Moments{0.0, 0.0, 0.0, HUGE_VAL, -HUGE_VAL}; }

QME_HD void add_value(Moments& m, double x) {
  using fuse_detail::add;
  using fuse_detail::mul;
  using fuse_detail::sub;
  m.n += 1.0;
  const double d = sub(x, m.mean);
  m.mean = add(m.mean, d / m.n);
  m.m2 = add(m.m2, mul(d, sub(x, m.mean)));
  m.lo = x < m.lo ? x : m.lo;
  m.hi = x > m.hi ? x : m.hi;
}

QME_HD Moments merge(const Moments& a, const Moments& b) {
  if (b.n == 0.0) return a;
  if (a.n == 0.0) return b;
  using fuse_detail::add;
  using fuse_detail::mul;
  using fuse_detail::sub;
  const double n = a.n + b.n, d = sub(b.mean, a.mean);
  return Moments{n, add(a.mean, mul(d, b.n / n)),
                 add(add(a.m2, b.m2), mul(mul(d, d), mul(a.n, b.n) / n)),
                 b.lo < a.lo ? b.lo : a.lo, b.hi > a.hi ? b.hi : a.hi};
}

// fn(j, x, genuine) for the rows [r0, r1) of the matrix, row by row, and in each
// row the columns j0, j0 + step, ... below j1; x is the cleaned score (nan_to_num,
// -0.0 counted as +0.0: the ranking order ties them).
template <DType D, typename Fn>
QME_HD void for_each_value(const ScoreStatsArgs& a, int64_t r0, int64_t r1, int64_t j0,
                           int64_t j1, int64_t step, Fn&& fn) {
  using S = typename ScoreTraits<D>::Storage;
  const S* base = static_cast<const S*>(a.scores.data);
  const bool labels = a.q_pids != nullptr && a.g_pids != nullptr;
  for (int64_t i = r0; i < r1; ++i) {
    const S* row = base + i * a.scores.stride_row;
    const int64_t q = labels ? a.q_pids[i] : 0;
    for (int64_t j = j0; j < j1; j += step) {
      double x = fuse_detail::nan_to_num(ScoreTraits<D>::value(row[j * a.scores.stride_col]));
      if (x == 0.0) x = 0.0;
      fn(j, x, labels && a.g_pids[j] == q);
    }
  }
}

// Moments of the chunk's rows [r0, r1): all entries and genuine entries, the row's
// columns j0, j0 + step, ... below j1 (one thread's share; step 1 covers [j0, j1)).
template <DType D>
QME_HD void chunk_moments(const ScoreStatsArgs& a, int64_t r0, int64_t r1, int64_t j0,
                          int64_t j1, int64_t step, Moments& all, Moments& gen) {
  for_each_value<D>(a, r0, r1, j0, j1, step, [&](int64_t, double x, bool genuine) {
    add_value(all, x);
    if (genuine) add_value(gen, x);
  });
}

// The part's moments: lane `lane` of part `part` (columns j0 + lane, + kStatsLanes, ...).
template <DType D>
QME_HD void lane_moments(const ScoreStatsArgs& a, int64_t part, int64_t slices, int lane,
                         Moments& all, Moments& gen) {
  const int64_t c = part / slices, sl = part % slices;
  const int64_t r0 = c * kStatsChunkRows;
  const int64_t r1 = r0 + kStatsChunkRows < a.scores.rows ? r0 + kStatsChunkRows : a.scores.rows;
  const int64_t j0 = sl * kStatsSliceCols;
  const int64_t j1 = j0 + kStatsSliceCols < a.scores.cols ? j0 + kStatsSliceCols : a.scores.cols;
  chunk_moments<D>(a, r0, r1, j0 + lane, j1, kStatsLanes, all, gen);
}

// The lanes' merge tree (the CUDA block reduction, pair for pair); result in v[0].
inline void tree_merge(Moments* v) {
  for (int s = kStatsLanes / 2; s > 0; s >>= 1)
    for (int t = 0; t < s; ++t) v[t] = merge(v[t], v[t + s]);
}

QME_HD void write_moments(double* out, const Moments& m) {
  out[0] = m.n;
  out[1] = m.mean;
  out[2] = m.m2;
  out[3] = m.lo;
  out[4] = m.hi;
}

QME_HD Moments read_moments(const double* in) { return Moments{in[0], in[1], in[2], in[3], in[4]}; }

}  // namespace stats_detail
}  // namespace qme
