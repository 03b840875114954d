// CPU twin of openset_stats: one pass over each probe's merge-score row gives,
// for every enrolment split at once, the best non-genuine enrolled score and
// the rank of the genuine column (SPEC 2.3).
#include <limits>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"

namespace qme {
namespace {

template <DType D>
void openset_rows(const OpensetStatsArgs& a, int64_t r0, int64_t r1) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, C = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int NS = a.num_splits;
  std::vector<K> best(NS);
  std::vector<uint8_t> seen(NS);
  std::vector<int64_t> ge(NS);
  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    const int64_t gc = a.genuine_col[p];
    const bool mated = gc >= 0;
    const K gk = mated ? T::key(row[gc * sc]) : K(0);
    std::fill(best.begin(), best.end(), K(0));
    std::fill(seen.begin(), seen.end(), uint8_t(0));
    std::fill(ge.begin(), ge.end(), int64_t(0));
    for (int64_t c = 0; c < C; ++c) {
      if (c == gc) continue;
      const K k = T::key(row[c * sc]);
      const bool above = mated && k >= gk;
      for (int s = 0; s < NS; ++s) {
        if (!a.enrolled[s * C + c]) continue;
        if (!seen[s] || k > best[s]) best[s] = k;
        seen[s] = 1;
        ge[s] += above;
      }
    }
    for (int s = 0; s < NS; ++s) {
      double v = -std::numeric_limits<double>::infinity();
      if (seen[s]) {
        if constexpr (sizeof(K) == 8) v = double_from_key(best[s]);
        else v = static_cast<double>(float_from_key(best[s]));
      }
      a.max_other[s * P + p] = v;
      a.num_ge[s * P + p] = ge[s];
    }
  }
}

}  // namespace

void openset_stats_cpu(const OpensetStatsArgs& a, int num_threads) {
  check_matrix(a.scores, "merge_scores");
  if (a.num_splits < 1) throw InvalidArgument("splits: at least one split is required");
  if (a.scores.rows == 0) return;
  for (int64_t p = 0; p < a.scores.rows; ++p)
    if (a.genuine_col[p] >= a.scores.cols)
      throw InvalidArgument("genuine_col: column index out of range");
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    const int64_t min_rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, a.scores.cols));
    parallel_for_blocks(a.scores.rows, num_threads, min_rows,
                        [&](int, int64_t b, int64_t e) { openset_rows<D>(a, b, e); });
    return 0;
  });
}

}  // namespace qme
