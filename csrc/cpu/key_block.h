// Keys of a block of scores and bit masks over them, vectorised with runtime
// dispatch (AVX2 where the CPU has it, portable code elsewhere): the building
// blocks of the engine's one-read-per-row kernels. A block is at most a few
// thousand entries, sized by the caller to stay in L1.
#pragma once

#include <cstdint>

#include "qme/common.h"

namespace qme {
namespace detail {

// NaN, +inf and -inf entries seen (keys 0, kPosInfKey, kNegInfKey).
struct NonFinite {
  int64_t nan = 0, pinf = 0, ninf = 0;
  void add(const NonFinite& o) { nan += o.nan; pinf += o.pinf; ninf += o.ninf; }
};

// out[i] = key_from_float(x[i]) for i < n; the non-finite entries are added to nf.
void keys_f32(const float* x, int64_t n, uint32_t* out, NonFinite& nf);

// words[i / 64] bit i % 64 = (keys[i] >= t), for i < n (n <= 64 * number of words;
// the unused high bits of the last word are 0).
void ge_mask(const uint32_t* keys, int64_t n, uint32_t t, uint64_t* words);
void ge_mask(const uint64_t* keys, int64_t n, uint64_t t, uint64_t* words);

// sum over w < n_words of popcount(a[w] & b[w]).
int64_t and_popcount(const uint64_t* a, const uint64_t* b, int64_t n_words);

// Smallest non-NaN key (lo; unchanged when all are NaN) and largest key (hi) of n keys,
// folded into lo/hi.
void key_range(const uint32_t* keys, int64_t n, uint32_t& lo, uint32_t& hi);
void key_range(const uint64_t* keys, int64_t n, uint64_t& lo, uint64_t& hi);

// Whether the vectorised bodies run here (AVX2 and POPCNT, checked once).
bool has_avx2();

// For rows with few goods: cum[u] += the number of the m entries (columns c0 + i,
// keys[i]) ranked before good u (key gkeys[u], column gcols[u]): a higher key, or the
// same key and a lower column. Vectorised over entries, one sweep per good; returns
// false (nothing done) where the CPU lacks AVX2 or the columns exceed int32.
bool count_preceding(const uint32_t* keys, int64_t m, int64_t c0, const uint32_t* gkeys,
                     const int64_t* gcols, int n, int64_t* cum);

// Keys of n scores of any dtype and column stride (the fast path: contiguous float32).
template <DType D>
inline void keys_of(const typename ScoreTraits<D>::Storage* row, int64_t stride, int64_t n,
                    typename ScoreTraits<D>::Key* out, NonFinite& nf) {
  using T = ScoreTraits<D>;
  using K = typename T::Key;
  if constexpr (D == DType::kFloat32) {
    if (stride == 1) return keys_f32(row, n, out, nf);
  }
  NonFinite c;
  for (int64_t i = 0; i < n; ++i) {
    const K k = T::key(row[i * stride]);
    out[i] = k;
    c.nan += k == K(0);
    c.pinf += k == kPosInfKey<K>;
    c.ninf += k == kNegInfKey<K>;
  }
  nf.add(c);
}

}  // namespace detail
}  // namespace qme
