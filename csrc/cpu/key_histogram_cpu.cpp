// CPU twin of key_histogram: one radix digit of the score keys, optionally
// restricted to entries under given key prefixes (the refinement passes of an
// exact order-statistic select, SPEC 2.2). Integer counts only.
#include <algorithm>
#include <limits>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"

namespace qme {
namespace {

struct Partial {
  std::vector<int64_t> hist;
  int64_t nan_count = 0;
  uint64_t min_key = std::numeric_limits<uint64_t>::max();
  uint64_t max_key = 0;
};

template <DType D>
void histogram_rows(const KeyHistogramArgs& a, int64_t r0, int64_t r1, Partial& out) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  constexpr int kBits = static_cast<int>(sizeof(K) * 8);
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t G = a.scores.cols, sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int64_t nbins = int64_t{1} << a.digit_bits;
  const K digit_mask = static_cast<K>(nbins - 1);
  const int F = a.num_prefixes;
  const K nan_key = static_cast<K>(a.nan_key);
  K lo = std::numeric_limits<K>::max(), hi = 0;
  int64_t nans = 0;
  int64_t* hist = out.hist.data();
  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    for (int64_t j = 0; j < G; ++j) {
      K k = T::key(row[j * sc]);
      if (k == 0) { ++nans; k = nan_key; }
      else { lo = std::min(lo, k); hi = std::max(hi, k); }
      const int64_t bin = static_cast<int64_t>((k >> a.digit_shift) & digit_mask);
      if (F == 0) {
        hist[bin]++;
      } else {
        const K pre = a.prefix_shift >= kBits ? K(0) : static_cast<K>(k >> a.prefix_shift);
        for (int f = 0; f < F; ++f)
          if (pre == static_cast<K>(a.prefixes[f])) hist[f * nbins + bin]++;
      }
    }
  }
  out.nan_count += nans;
  if (lo <= hi) {  // at least one non-NaN score in this block
    out.min_key = std::min<uint64_t>(out.min_key, lo);
    out.max_key = std::max<uint64_t>(out.max_key, hi);
  }
}

}  // namespace

void key_histogram_cpu(const KeyHistogramArgs& a, int num_threads) {
  check_matrix(a.scores, "scores");
  const int kb = key_bits(a.scores.dtype);
  if (a.digit_bits < 1 || a.digit_bits > 16 || a.digit_shift < 0 || a.digit_shift + a.digit_bits > kb)
    throw InvalidArgument("digit_shift/digit_bits: digit out of the " + std::to_string(kb) + "-bit key");
  if (a.num_prefixes < 0 || (a.num_prefixes > 0 && a.prefixes == nullptr))
    throw InvalidArgument("prefixes: expected num_prefixes >= 0 and a buffer when > 0");
  const int64_t nbins = int64_t{1} << a.digit_bits;
  const int64_t nh = std::max(1, a.num_prefixes) * nbins;
  std::fill(a.hist, a.hist + nh, int64_t{0});
  *a.nan_count = 0;
  *a.min_key = std::numeric_limits<uint64_t>::max();
  *a.max_key = 0;
  if (a.scores.rows == 0 || a.scores.cols == 0) return;
  const int64_t min_rows = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, a.scores.cols));
  const int nt = parallel_blocks(a.scores.rows, num_threads, min_rows);
  std::vector<Partial> parts(nt);
  for (auto& part : parts) part.hist.assign(nh, 0);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(a.scores.rows, nt, min_rows,
                        [&](int t, int64_t b, int64_t e) { histogram_rows<D>(a, b, e, parts[t]); });
    return 0;
  });
  for (const auto& part : parts) {
    for (int64_t i = 0; i < nh; ++i) a.hist[i] += part.hist[i];
    *a.nan_count += part.nan_count;
    *a.min_key = std::min(*a.min_key, part.min_key);
    *a.max_key = std::max(*a.max_key, part.max_key);
  }
}

}  // namespace qme
