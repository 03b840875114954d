// CPU twin of key_histogram: one radix digit of the score keys, optionally
// restricted to entries under given key prefixes (the refinement passes of an
// exact order-statistic select, docs/definitions.rst, §2.2). Integer counts only.
#include <algorithm>
#include <limits>
#include <vector>

#include "key_block.h"
#include "parallel.h"
#include "qme/ops.h"

namespace qme {
namespace {

constexpr int64_t kChunk = 2048;          // keys of one block, in L1
constexpr int64_t kFlush = int64_t{1} << 30;  // entries between flushes of the 32-bit counts

struct Partial {
  std::vector<int64_t> hist;
  int64_t nan_count = 0;
  uint64_t min_key = std::numeric_limits<uint64_t>::max();
  uint64_t max_key = 0;
};

// Keys are made a block at a time (vectorised, key_block.h), then counted into
// 32-bit bins (half the cache footprint of int64: a 16-bit digit's 256 KiB stay
// in L2), flushed into the int64 histogram before they could overflow.
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
  const int shift = a.digit_shift;
  const int F = a.num_prefixes;
  const K nan_key = static_cast<K>(a.nan_key);
  const int64_t nh = std::max(1, F) * nbins;
  std::vector<uint32_t> local(nh, 0);
  std::vector<K> keys(kChunk);
  K lo = std::numeric_limits<K>::max(), hi = 0;
  detail::NonFinite nf;
  int64_t since_flush = 0;
  auto flush = [&] {
    for (int64_t i = 0; i < nh; ++i) out.hist[i] += local[i];
    std::fill(local.begin(), local.end(), 0u);
    since_flush = 0;
  };
  uint32_t* h = local.data();
  // Refinement passes with at most 16 prefix bits (the last digit of a 32-bit key):
  // prefix -> histogram row (-1: not selected), so an entry costs one lookup.
  std::vector<int8_t> slot;  // 64 KiB: stays in L2
  const int prefix_bits = kBits - a.prefix_shift;
  if (F > 0 && F <= 127 && a.prefix_shift < kBits && prefix_bits <= 16) {
    slot.assign(size_t{1} << prefix_bits, -1);
    for (int f = 0; f < F && !slot.empty(); ++f) {
      const uint64_t pre = a.prefixes[f];
      if (pre >= (uint64_t{1} << prefix_bits)) continue;  // matches no key
      if (slot[pre] >= 0) slot.clear();  // a repeated prefix fills every row: general loop
      else slot[pre] = static_cast<int8_t>(f);
    }
  }
  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    for (int64_t c0 = 0; c0 < G; c0 += kChunk) {
      const int64_t n = std::min(kChunk, G - c0);
      K* kb = keys.data();
      const int64_t nan_before = nf.nan;
      detail::keys_of<D>(row + c0 * sc, sc, n, kb, nf);
      detail::key_range(kb, n, lo, hi);
      if (nf.nan != nan_before)
        for (int64_t i = 0; i < n; ++i) kb[i] = kb[i] == 0 ? nan_key : kb[i];
      if (F == 0) {
        for (int64_t i = 0; i < n; ++i) h[(kb[i] >> shift) & digit_mask]++;
      } else if (!slot.empty()) {  // one lookup per entry, whatever F
        const int ps = a.prefix_shift;
        for (int64_t i = 0; i < n; ++i) {
          const K k = kb[i];
          const int32_t f = slot[static_cast<size_t>(k >> ps)];
          if (f >= 0) h[f * nbins + ((k >> shift) & digit_mask)]++;
        }
      } else {
        const int ps = a.prefix_shift;
        for (int64_t i = 0; i < n; ++i) {
          const K k = kb[i];
          const K pre = ps >= kBits ? K(0) : static_cast<K>(k >> ps);
          for (int f = 0; f < F; ++f)
            if (pre == static_cast<K>(a.prefixes[f])) h[f * nbins + ((k >> shift) & digit_mask)]++;
        }
      }
      since_flush += n;
      if (since_flush >= kFlush) flush();
    }
  }
  flush();
  out.nan_count += nf.nan;
  if (hi != 0) {  // at least one non-NaN score in this block (non-NaN keys are > 0)
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
