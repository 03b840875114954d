// Ranking order as one unsigned integer per entry ("rank code"), shared by the
// CPU twins of rank_counts and count_before: key in the high bits, the bitwise
// complement of the column in the low bits, so "ranks before" is a single `>`
// (higher key first, lower column on ties).
#pragma once

#include <cstdint>

namespace qme {
namespace detail {

// 32-bit keys with 32-bit columns fit a uint64 code; 64-bit keys use 128 bits.
template <typename K> struct CodeOf { using type = unsigned __int128; };
template <> struct CodeOf<uint32_t> { using type = uint64_t; };

template <typename K>
inline typename CodeOf<K>::type rank_code(K key, int64_t col) {
  using C = typename CodeOf<K>::type;
  constexpr int kShift = static_cast<int>(sizeof(C) * 8 / 2);
  const C low = static_cast<C>(~static_cast<uint64_t>(col)) & ((C(1) << kShift) - 1);
  return (static_cast<C>(key) << kShift) | low;
}

// Number of codes in `desc` (descending) that are >= c: the index of the first
// listed code that c ranks before (an entry does not precede itself).
template <typename C>
inline int64_t goods_above(C c, const C* desc, int64_t n) {
  int64_t lo = 0;
  while (n > 0) {
    const int64_t half = n >> 1;
    const bool above = desc[lo + half] >= c;
    lo = above ? lo + half + 1 : lo;
    n = above ? n - half - 1 : half;
  }
  return lo;
}

}  // namespace detail
}  // namespace qme
