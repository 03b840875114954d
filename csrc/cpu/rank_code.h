// Ranking order as one unsigned integer per entry ("rank code"), shared by the
// CPU twins of rank_counts and count_before: key in the high bits, the bitwise
// complement of the column in the low bits, so "ranks before" is a single `>`
// (higher key first, lower column on ties).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

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
// Branch-free: the trip count depends on n only and the step is a select (cmov),
// so random entries cost no branch mispredictions.
template <typename C>
inline int64_t goods_above(C c, const C* desc, int64_t n) {
  if (n <= 0) return 0;
  const C* base = desc;
  while (n > 1) {
    const int64_t half = n >> 1;
    base += half & -static_cast<int64_t>(base[half - 1] >= c);
    n -= half;
  }
  return (base - desc) + (*base >= c ? 1 : 0);
}

// goods_above over a descending list through a key-bucket index: the goods are
// bucketed by (key - floor_key) >> shift, so an entry is searched only from the
// first good of its own bucket, with a fixed number of select steps per row
// (log2 of the fullest bucket, not of n): no data-dependent branch per entry.
// Goods after the entry's bucket have smaller keys, so they (and the zero
// padding) never count: the search window may run past the bucket.
template <typename K, typename C>
class GoodsIndex {
 public:
  // desc: n > 0 codes, descending, of keys K (the key is the code's high half).
  void build(const C* desc, int64_t n) {
    floor_ = desc[n - 1];
    floor_key_ = key_of(desc[n - 1]);
    const K top = key_of(desc[0]);
    // ~16 buckets per good (at most 4096: the index stays in L1/L2 and its build is a
    // small part of a row), never fewer than 2 per good: float keys crowd the goods of
    // a few exponents into few buckets, and each halving of the fullest one saves a
    // select step on every entry
    int64_t nb = 16;
    while ((nb < 16 * n && nb < 4096) || (nb < 2 * n && nb < (int64_t{1} << 16))) nb <<= 1;
    const uint64_t span = static_cast<uint64_t>(top - floor_key_);
    shift_ = 0;
    while ((span >> shift_) >= static_cast<uint64_t>(nb - 1)) ++shift_;
    last_ = static_cast<uint64_t>(nb - 1);
    // first_[b] = number of goods whose bucket is > b (index of bucket b's first good)
    first_.assign(nb + 1, 0);
    for (int64_t i = 0; i < n; ++i) first_[bucket(key_of(desc[i]))]++;
    int64_t fullest = 0;
    for (int64_t b = nb - 1; b >= 0; --b) {
      fullest = std::max(fullest, first_[b]);
      first_[b] = first_[b + 1] + first_[b];
    }
    for (int64_t b = 0; b < nb; ++b) first_[b] = first_[b + 1];
    width_ = 1;
    while (width_ <= fullest) width_ <<= 1;  // width_ > fullest: every answer reachable
    padded_.assign(desc, desc + n);
    padded_.resize(n + width_, C(0));        // c > floor >= 0, so 0 never counts
  }
  C floor() const { return floor_; }
  // Only for c > floor(): the number of goods with code >= c.
  int64_t above(C c) const {
    const C* base = padded_.data() + first_[bucket(key_of(c))];
    const C* start = padded_.data();
    for (int64_t step = width_ >> 1; step >= 1; step >>= 1)
      base += step & -static_cast<int64_t>(base[step - 1] >= c);
    return base - start;
  }

 private:
  static K key_of(C c) { return static_cast<K>(c >> (sizeof(C) * 4)); }
  uint64_t bucket(K k) const {
    const uint64_t b = static_cast<uint64_t>(k - floor_key_) >> shift_;
    return b < last_ ? b : last_;
  }
  C floor_ = 0;
  K floor_key_ = 0;
  int shift_ = 0;
  uint64_t last_ = 0;
  int64_t width_ = 1;
  std::vector<int64_t> first_;
  std::vector<C> padded_;
};

}  // namespace detail
}  // namespace qme
