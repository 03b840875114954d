// score_stats: the statistics the fusion normalisers are fitted from (SPEC 3), in one
// pass over a score matrix: count, mean, sum of squared deviations (M2), min and max
// of all entries and of the genuine ones (probe id == gallery id, decided on the fly
// from the id vectors, never a P x G mask). Scores are cleaned like np.nan_to_num
// first (NaN -> 0, +-inf -> +-FLT_MAX), as the normalisers see them.
//
// Deterministic: the rows are cut into fixed chunks of kStatsChunkRows; each chunk's
// moments are accumulated in a fixed order and the chunks merged in a fixed order, so
// the result depends neither on the thread count nor on the launch. The CPU and CUDA
// twins use different (fixed) orders: they agree to rounding, not bit for bit.
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

// Moments of the chunk's rows [r0, r1): all entries and genuine entries, the row's
// columns j0, j0 + step, ... below j1 (one thread's share; step 1 covers [j0, j1)).
template <DType D>
QME_HD void chunk_moments(const ScoreStatsArgs& a, int64_t r0, int64_t r1, int64_t j0,
                          int64_t j1, int64_t step, Moments& all, Moments& gen) {
  using S = typename ScoreTraits<D>::Storage;
  const S* base = static_cast<const S*>(a.scores.data);
  const bool labels = a.q_pids != nullptr && a.g_pids != nullptr;
  for (int64_t i = r0; i < r1; ++i) {
    const S* row = base + i * a.scores.stride_row;
    const int64_t q = labels ? a.q_pids[i] : 0;
    for (int64_t j = j0; j < j1; j += step) {
      const double x = fuse_detail::nan_to_num(ScoreTraits<D>::value(row[j * a.scores.stride_col]));
      add_value(all, x);
      if (labels && a.g_pids[j] == q) add_value(gen, x);
    }
  }
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
