// CPU twin of openset_stats: one read of each probe's merge-score row gives, for
// every enrolment split at once, the best non-genuine enrolled score and the rank
// of the genuine column (docs/definitions.rst, §2.3), plus the matrix's non-finite counts.
//
// The row is read once, a chunk at a time, into an L1-resident key buffer; every
// split then works on that buffer, never on the matrix:
// * num_ge: a bit mask "key >= genuine key" ANDed with the split's enrolment
//   bits and counted (popcount; 64 columns per instruction and split);
// * the split maxima: the row's kTop largest keys are kept on the side (a
//   vectorised "key above the running threshold" bit mask per kSub entries, rare
//   inserts); a split's maximum is its first enrolled column among them, exact
//   because every column left out scores at most the smallest kept key. Only a
//   split that enrols none of them (rare: a split enrolling a small fraction of
//   the subjects) is completed by a scan of its enrolled columns.
#include <algorithm>
#include <array>
#include <limits>
#include <vector>

#include "key_block.h"
#include "parallel.h"
#include "qme/ops.h"

namespace qme {
namespace {

constexpr int64_t kChunk = 2048;  // keys of one chunk (8 KiB f32) stay in L1
constexpr int64_t kSub = 256;     // entries per refresh of the largest keys' threshold
constexpr int kTop = 16;

// The kTop largest keys seen (unsorted) with their columns; `thr` is the smallest
// kept key once full (0 before: key 0 is NaN, which never enters).
template <typename K>
struct TopKeys {
  std::array<K, kTop> key{};
  std::array<int64_t, kTop> col{};
  int n = 0, min_i = 0;
  K thr = 0;
  void clear() { n = 0; min_i = 0; thr = 0; }
  void insert(K k, int64_t c) {
    if (n < kTop) {
      key[n] = k; col[n] = c; ++n;
      if (n < kTop) return;
    } else {
      key[min_i] = k; col[min_i] = c;
    }
    min_i = 0;
    for (int i = 1; i < kTop; ++i) if (key[i] < key[min_i]) min_i = i;
    thr = key[min_i];
  }
};

template <DType D>
void openset_rows(const OpensetStatsArgs& a, const std::vector<int64_t>& n_enrolled,
                  const std::vector<uint64_t>& enrolled_bits, int64_t r0, int64_t r1,
                  detail::NonFinite& nf) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, C = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int64_t W = (C + 63) / 64;  // words per split in enrolled_bits
  const int NS = a.num_splits;
  std::vector<K> keys(kChunk);
  std::vector<uint64_t> mask(kChunk / 64);
  std::vector<int64_t> ge(NS);
  std::vector<int> order(kTop);
  TopKeys<K> top;
  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    const int64_t gc = a.genuine_col[p];
    const bool mated = gc >= 0;
    const K gk = mated ? T::key(row[gc * sc]) : K(0);
    std::fill(ge.begin(), ge.end(), int64_t(0));
    top.clear();
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      const int64_t n = std::min(kChunk, C - c0);
      const int64_t nw = (n + 63) / 64;
      K* kb = keys.data();
      detail::keys_of<D>(row + c0 * sc, sc, n, kb, nf);
      if (mated) {  // num_ge: enrolled columns whose key is >= the genuine key
        detail::ge_mask(kb, n, gk, mask.data());
        for (int s = 0; s < NS; ++s)
          ge[s] += detail::and_popcount(mask.data(), enrolled_bits.data() + s * W + c0 / 64, nw);
      }
      // the largest keys: a mask of the keys above the running threshold per kSub
      // entries, then exact inserts (rare once the threshold has risen)
      for (int64_t s0 = 0; s0 < n; s0 += kSub) {
        const int64_t m = std::min(kSub, n - s0);
        if (top.thr == std::numeric_limits<K>::max()) break;
        detail::ge_mask(kb + s0, m, static_cast<K>(top.thr + 1), mask.data());
        for (int64_t w = 0; w * 64 < m; ++w) {
          for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
            const int64_t i = s0 + w * 64 + __builtin_ctzll(bits);
            if (kb[i] > top.thr && c0 + i != gc) top.insert(kb[i], c0 + i);
          }
        }
      }
    }
    // the genuine column was counted like any other (its key is >= itself)
    if (mated)
      for (int s = 0; s < NS; ++s) ge[s] -= a.enrolled[s * C + gc] != 0;
    const int nt = top.n;
    for (int i = 0; i < nt; ++i) order[i] = i;
    std::sort(order.begin(), order.begin() + nt,
              [&](int x, int y) { return top.key[x] > top.key[y]; });
    for (int s = 0; s < NS; ++s) {
      const uint8_t* e = a.enrolled + s * C;
      const bool seen = n_enrolled[s] - (mated && e[gc] != 0 ? 1 : 0) > 0;
      double v = -std::numeric_limits<double>::infinity();
      if (seen) {
        K best = 0;
        bool found = false;
        for (int i = 0; i < nt && !found; ++i)
          if (e[top.col[order[i]]]) { best = top.key[order[i]]; found = true; }
        if (!found) {  // none of the kept keys is enrolled here: scan this split
          for (int64_t c = 0; c < C; ++c)
            if (e[c] && c != gc) best = std::max(best, T::key(row[c * sc]));
        }
        if constexpr (sizeof(K) == 8) v = double_from_key(best);
        else v = static_cast<double>(float_from_key(best));
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
  const int64_t C = a.scores.cols, W = (C + 63) / 64;
  // enrolment as bits (one word per 64 columns and split) and the enrolled count
  std::vector<int64_t> n_enrolled(a.num_splits, 0);
  std::vector<uint64_t> enrolled_bits(static_cast<size_t>(a.num_splits) * W, 0);
  for (int s = 0; s < a.num_splits; ++s)
    for (int64_t c = 0; c < C; ++c)
      if (a.enrolled[s * C + c]) {
        ++n_enrolled[s];
        enrolled_bits[s * W + c / 64] |= uint64_t{1} << (c % 64);
      }
  const int64_t min_rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C));
  const int nt = parallel_blocks(a.scores.rows, num_threads, min_rows);
  std::vector<detail::NonFinite> parts(nt);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(a.scores.rows, nt, min_rows, [&](int t, int64_t b, int64_t e) {
      openset_rows<D>(a, n_enrolled, enrolled_bits, b, e, parts[t]);
    });
    return 0;
  });
  for (const detail::NonFinite& c : parts) {
    a.nonfinite[0] += c.nan;
    a.nonfinite[1] += c.pinf;
    a.nonfinite[2] += c.ninf;
  }
}

}  // namespace qme
