// Vectorised key blocks (key_block.h): an AVX2 body chosen at run time
// (__builtin_cpu_supports), the portable loop otherwise. Both give the same
// integers, so results never depend on the machine.
#include "key_block.h"

#if defined(__x86_64__) || defined(__i386__)
#define QME_KEY_BLOCK_X86 1
#include <immintrin.h>
#else
#define QME_KEY_BLOCK_X86 0  // other machines: the portable loops only
#endif

#include <algorithm>

namespace qme {
namespace detail {
bool has_avx2() {
#if QME_KEY_BLOCK_X86
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return yes;
#else
  return false;
#endif
}

namespace {

void keys_f32_portable(const float* x, int64_t n, uint32_t* out, NonFinite& nf) {
  int64_t cn = 0, cp = 0, cm = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = key_from_float(x[i]);
    out[i] = k;
    cn += k == 0u;
    cp += k == kPosInfKey<uint32_t>;
    cm += k == kNegInfKey<uint32_t>;
  }
  nf.nan += cn; nf.pinf += cp; nf.ninf += cm;
}

#if QME_KEY_BLOCK_X86
// key = NaN ? 0 : (sign ? ~u : u | 2^31), -0.0 folded onto +0.0 (the order-preserving keys of common.h).
__attribute__((target("avx2"))) void keys_f32_avx2(const float* x, int64_t n, uint32_t* out,
                                                   NonFinite& nf) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i inf_bits = _mm256_set1_epi32(0x7F800000);
  const __m256i neg_zero = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i pinf = _mm256_set1_epi32(static_cast<int>(kPosInfKey<uint32_t>));
  const __m256i ninf = _mm256_set1_epi32(static_cast<int>(kNegInfKey<uint32_t>));
  const __m256i zero = _mm256_setzero_si256();
  __m256i cn = zero, cp = zero, cm = zero;  // lanes count down (compare masks are -1)
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    u = _mm256_andnot_si256(_mm256_cmpeq_epi32(u, neg_zero), u);  // -0.0 -> +0.0
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf_bits);
    const __m256i sign = _mm256_srai_epi32(u, 31);                  // all ones if negative
    // negative: ~u = u ^ 0xFFFFFFFF; positive: u | 2^31 = u ^ 2^31 (bit 31 is 0)
    __m256i k = _mm256_xor_si256(u, _mm256_or_si256(sign, neg_zero));
    k = _mm256_andnot_si256(is_nan, k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), k);
    cn = _mm256_add_epi32(cn, is_nan);
    cp = _mm256_add_epi32(cp, _mm256_cmpeq_epi32(k, pinf));
    cm = _mm256_add_epi32(cm, _mm256_cmpeq_epi32(k, ninf));
  }
  alignas(32) int32_t l[3][8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l[0]), cn);
  _mm256_store_si256(reinterpret_cast<__m256i*>(l[1]), cp);
  _mm256_store_si256(reinterpret_cast<__m256i*>(l[2]), cm);
  for (int j = 0; j < 8; ++j) { nf.nan -= l[0][j]; nf.pinf -= l[1][j]; nf.ninf -= l[2][j]; }
  if (i < n) keys_f32_portable(x + i, n - i, out + i, nf);
}
#endif

template <typename K>
void ge_mask_portable(const K* keys, int64_t n, K t, uint64_t* words) {
  for (int64_t w = 0; w * 64 < n; ++w) {
    const int64_t m = n - w * 64 < 64 ? n - w * 64 : 64;
    uint64_t bits = 0;
    for (int64_t j = 0; j < m; ++j) bits |= static_cast<uint64_t>(keys[w * 64 + j] >= t) << j;
    words[w] = bits;
  }
}

#if QME_KEY_BLOCK_X86
__attribute__((target("avx2"))) void ge_mask_avx2(const uint32_t* keys, int64_t n, uint32_t t,
                                                  uint64_t* words) {
  // unsigned k >= t  <=>  signed (k ^ 2^31) > (t ^ 2^31) - 1, and t = 0 is always true
  if (t == 0) {
    for (int64_t w = 0; w * 64 < n; ++w)
      words[w] = n - w * 64 >= 64 ? ~uint64_t{0} : (uint64_t{1} << (n - w * 64)) - 1;
    return;
  }
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i tt = _mm256_set1_epi32(static_cast<int>((t ^ 0x80000000u) - 1u));
  int64_t w = 0;
  for (; (w + 1) * 64 <= n; ++w) {
    uint64_t bits = 0;
    for (int j = 0; j < 8; ++j) {
      const __m256i k = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + w * 64 + j * 8)), flip);
      const uint32_t m = static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, tt))));
      bits |= static_cast<uint64_t>(m) << (8 * j);
    }
    words[w] = bits;
  }
  if (w * 64 < n) ge_mask_portable(keys + w * 64, n - w * 64, t, words + w);
}
#endif

#if QME_KEY_BLOCK_X86
__attribute__((target("avx2,popcnt"))) int64_t and_popcount_hw(const uint64_t* a,
                                                                const uint64_t* b, int64_t n) {
  int64_t c = 0;
  for (int64_t w = 0; w < n; ++w) c += __builtin_popcountll(a[w] & b[w]);
  return c;
}
#endif

#if QME_KEY_BLOCK_X86
__attribute__((target("avx2"))) void count_preceding_avx2(const uint32_t* keys, int64_t m,
                                                          int64_t c0, const uint32_t* gkeys,
                                                          const int64_t* gcols, int n,
                                                          int64_t* cum) {
  const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t m8 = m & ~int64_t{7};
  for (int u = 0; u < n; ++u) {
    const __m256i gk = _mm256_set1_epi32(static_cast<int>(gkeys[u] ^ 0x80000000u));
    // entries i < lim have a lower column than the good
    const int64_t lim64 = std::min<int64_t>(std::max<int64_t>(gcols[u] - c0, 0), m);
    const __m256i lim = _mm256_set1_epi32(static_cast<int>(lim64));
    __m256i acc = _mm256_setzero_si256();
    __m256i iv = lane;
    const __m256i eight = _mm256_set1_epi32(8);
    for (int64_t i = 0; i < m8; i += 8) {
      const __m256i k = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i)), flip);
      const __m256i gt = _mm256_cmpgt_epi32(k, gk);
      const __m256i tie = _mm256_and_si256(_mm256_cmpeq_epi32(k, gk), _mm256_cmpgt_epi32(lim, iv));
      acc = _mm256_sub_epi32(acc, _mm256_or_si256(gt, tie));  // masks are -1
      iv = _mm256_add_epi32(iv, eight);
    }
    alignas(32) int32_t l[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(l), acc);
    int64_t c = 0;
    for (int j = 0; j < 8; ++j) c += l[j];
    for (int64_t i = m8; i < m; ++i)
      c += keys[i] > gkeys[u] || (keys[i] == gkeys[u] && i < lim64);
    cum[u] += c;
  }
}
#endif

template <typename K>
void key_range_portable(const K* keys, int64_t n, K& lo, K& hi) {
  K l = lo, h = hi;
  for (int64_t i = 0; i < n; ++i) {  // NaN (key 0) maps to the top for the minimum
    const K k = keys[i];
    l = std::min(l, k == 0 ? static_cast<K>(~K(0)) : k);
    h = std::max(h, k);
  }
  lo = l;
  hi = h;
}

#if QME_KEY_BLOCK_X86
__attribute__((target("avx2"))) void key_range_avx2(const uint32_t* keys, int64_t n,
                                                    uint32_t& lo, uint32_t& hi) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i l = _mm256_set1_epi32(-1), h = zero;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    l = _mm256_min_epu32(l, _mm256_or_si256(k, _mm256_cmpeq_epi32(k, zero)));
    h = _mm256_max_epu32(h, k);
  }
  alignas(32) uint32_t a[8], b[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a), l);
  _mm256_store_si256(reinterpret_cast<__m256i*>(b), h);
  for (int j = 0; j < 8; ++j) { lo = std::min(lo, a[j]); hi = std::max(hi, b[j]); }
  key_range_portable(keys + i, n - i, lo, hi);
}
#endif

}  // namespace

void key_range(const uint32_t* keys, int64_t n, uint32_t& lo, uint32_t& hi) {
#if QME_KEY_BLOCK_X86
  if (has_avx2()) return key_range_avx2(keys, n, lo, hi);
#endif
  key_range_portable(keys, n, lo, hi);
}

void key_range(const uint64_t* keys, int64_t n, uint64_t& lo, uint64_t& hi) {
  key_range_portable(keys, n, lo, hi);
}

bool count_preceding(const uint32_t* keys, int64_t m, int64_t c0, const uint32_t* gkeys,
                     const int64_t* gcols, int n, int64_t* cum) {
#if QME_KEY_BLOCK_X86
  if (!has_avx2() || m > (int64_t{1} << 30)) return false;
  count_preceding_avx2(keys, m, c0, gkeys, gcols, n, cum);
  return true;
#else
  (void)keys; (void)m; (void)c0; (void)gkeys; (void)gcols; (void)n; (void)cum;
  return false;
#endif
}

void keys_f32(const float* x, int64_t n, uint32_t* out, NonFinite& nf) {
#if QME_KEY_BLOCK_X86
  if (has_avx2()) return keys_f32_avx2(x, n, out, nf);
#endif
  keys_f32_portable(x, n, out, nf);
}

void ge_mask(const uint32_t* keys, int64_t n, uint32_t t, uint64_t* words) {
#if QME_KEY_BLOCK_X86
  if (has_avx2()) return ge_mask_avx2(keys, n, t, words);
#endif
  ge_mask_portable(keys, n, t, words);
}

void ge_mask(const uint64_t* keys, int64_t n, uint64_t t, uint64_t* words) {
  ge_mask_portable(keys, n, t, words);
}

int64_t and_popcount(const uint64_t* a, const uint64_t* b, int64_t n_words) {
#if QME_KEY_BLOCK_X86
  if (has_avx2()) return and_popcount_hw(a, b, n_words);
#endif
  int64_t c = 0;
  for (int64_t w = 0; w < n_words; ++w) c += __builtin_popcountll(a[w] & b[w]);
  return c;
}

}  // namespace detail
}  // namespace qme
