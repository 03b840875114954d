// CPU twin of rank_counts: per probe, one pass over its row counts how many
// entries precede each good entry (sort-free CMC/AP, docs/definitions.rst, §2.1).
//
// The goods of all modes are merged into one ranked list, so each entry of the
// row costs one (vectorised) floor comparison and, only when it ranks above the lowest good,
// one binary search; per-mode positions are recovered from prefix sums at the end.
// Ranking order is encoded in one unsigned integer per entry ("rank code"):
// key in the high bits, the bitwise complement of the column in the low bits,
// so "ranks before" is a single `>` (higher key first, lower column on ties).
#include <algorithm>
#include <string>
#include <vector>

#include "key_block.h"
#include "parallel.h"
#include "rank_code.h"
#include "qme/ops.h"

namespace qme {
namespace {

using detail::CodeOf;
using detail::goods_above;
using detail::GoodsIndex;
using detail::rank_code;

constexpr int64_t kChunk = 2048;  // keys of one block of a row, in L1
constexpr int64_t kFewGoods = 16;  // up to this many goods: a vectorised sweep per good

// R-precision / MAP@R (Musgrave et al. 2020) of one mode, R = n_m (its goods): a second
// walk of the same positions, keeping the goods at positions < R. Positions grow with
// the good's index, so those goods are a prefix; the sum runs in the AP loop's order.
template <class Goods>
void r_precision_terms(const Goods& goods, const std::vector<int64_t>& counts,
                       const std::vector<int64_t>& junk_fix, int64_t n, uint8_t good_m, int64_t R,
                       int64_t* r_hits, double* map_r) {
  int64_t before = 0, i_m = 0;
  double sum = 0.0;
  for (int64_t u = 0; u < n && i_m < R; ++u) {
    before += counts[u] + junk_fix[u];
    if (!(goods[u].flags & good_m)) continue;
    if (before >= R) break;
    sum += static_cast<double>(i_m + 1) / static_cast<double>(before + 1);
    ++i_m;
  }
  *r_hits = i_m;
  *map_r = R ? sum / static_cast<double>(R) : 0.0;
}

// Many goods, 32-bit keys: the goods' first key digit (the top 16 bits, the TAR pass's
// digit) indexes a table built once per row from the sorted goods. An entry whose digit
// holds no good has as many goods ranked at or above it as goods with a higher digit:
// one table load and one count, no search. Only entries sharing a digit with a good
// (a few per cent when goods and impostors mix) are searched exactly. The one largest
// run of digits without a good (the zero crossing of signed scores, typically) is one
// table slot, so the table spans the digits that hold goods, not the whole key range.
class DigitTable {
 public:
  // a digit holding several goods: its entries are searched among all goods
  static constexpr uint32_t kSearch = 0x80000000u;
  // desc: n > 0 codes of 32-bit keys, descending. False: the table would be too large
  // for the row (`limit` slots), use the bucket index instead.
  bool build(const uint64_t* desc, int64_t n, int64_t limit) {
    top_d_ = digit(desc[0]);
    floor_d_ = digit(desc[n - 1]);
    // the widest run of digits strictly between two goods' digits
    gap_lo_ = gap_hi_ = 0;  // digits gap_lo_ < d < gap_hi_ (empty when equal)
    for (int64_t u = 0; u + 1 < n; ++u) {
      const uint32_t hi = digit(desc[u]), lo = digit(desc[u + 1]);
      if (hi - lo > gap_hi_ - gap_lo_) { gap_hi_ = hi; gap_lo_ = lo; }
    }
    gap_len_ = gap_hi_ - gap_lo_ > 1 ? gap_hi_ - gap_lo_ - 1 : 0;
    // slots: 0 = below the floor's digit; 1 + (d - floor_d) for the digits, the gap's
    // digits all at the gap's first slot, the ones above it moved down by gap_len - 1;
    // the last slot: above the top good's digit
    const int64_t span = int64_t(top_d_) - floor_d_ + 1 - (gap_len_ ? gap_len_ - 1 : 0);
    if (span + 2 > limit) return false;
    table_.assign(span + 2, 0);
    one_.assign(span + 2, 0);
    table_[0] = static_cast<uint32_t>(n);  // below every good (never read back)
    // walk the digits upwards from the floor: goods with a higher digit than d
    int64_t u = n - 1;  // goods desc[u + 1 ..] have digits below the current one
    for (int64_t s = 1; s <= span; ++s) {
      const uint32_t d = digit_of_slot(s);
      while (u >= 0 && digit(desc[u]) < d) --u;
      // goods with digit > d: indices 0 .. first with digit <= d
      int64_t above = u + 1;
      while (above > 0 && digit(desc[above - 1]) == d) --above;
      const int64_t in_digit = u + 1 - above;
      table_[s] = static_cast<uint32_t>(above) | (in_digit > 1 ? kSearch : 0u);
      // one good in the digit: an entry is below it or not, one comparison
      if (in_digit == 1) one_[s] = desc[above];
    }
    table_[span + 1] = 0;  // above the top good: no good ranks at or above
    span_ = span;
    return true;
  }
  // out[i] = the table slot of keys[i] (any key: clamped below and above), i < m.
  // Branch-free min/max arithmetic (vectorised by the compiler): the sign of a score
  // decides the side of the zero-crossing gap, and a branch on it would miss half the time.
  void slots(const uint32_t* keys, int64_t m, int32_t* out) const {
    const int32_t first = 1 - static_cast<int32_t>(floor_d_);
    const int32_t after_gap = static_cast<int32_t>(gap_lo_ - floor_d_) + 2;  // raw slot of gap_lo + 1
    const int32_t cap = gap_len_ > 1 ? static_cast<int32_t>(gap_len_) - 1 : 0;
    const int32_t last = static_cast<int32_t>(span_ + 1);
    for (int64_t i = 0; i < m; ++i) {
      const int32_t raw = static_cast<int32_t>(keys[i] >> 16) + first;  // d - floor_d + 1
      const int32_t s = raw - std::min(std::max(raw - after_gap, 0), cap);
      out[i] = std::min(std::max(s, 0), last);
    }
  }
  // (goods with a higher digit) | kSearch, and the code of the digit's one good (0: none)
  uint32_t operator[](uint32_t s) const { return table_[s]; }
  uint64_t one(uint32_t s) const { return one_[s]; }

 private:
  static uint32_t digit(uint64_t code) { return static_cast<uint32_t>(code >> 48); }
  uint32_t digit_of_slot(int64_t s) const {  // the lowest digit of slot s
    uint32_t d = static_cast<uint32_t>(s - 1) + floor_d_;
    if (gap_len_ && d > gap_lo_) d += gap_len_ - 1;  // past the gap's one slot
    return d;
  }
  uint32_t top_d_ = 0, floor_d_ = 0, gap_lo_ = 0, gap_hi_ = 0, gap_len_ = 0;
  int64_t span_ = 0;
  std::vector<uint32_t> table_;
  std::vector<uint64_t> one_;
};

template <DType D>
void rank_rows(const RankCountsArgs& a, int64_t r0, int64_t r1) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  using C = typename CodeOf<K>::type;
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int M = a.num_modes;
  const uint8_t good_bits = static_cast<uint8_t>(M >= 3 ? 0x15 : (M == 2 ? 0x05 : 0x01));

  struct Good { C code; uint8_t flags; };
  std::vector<Good> goods;
  std::vector<C> codes;          // union of goods, descending
  std::vector<int64_t> counts;   // entries whose first preceded good is union[i]
  std::vector<int64_t> junk_fix[3];
  GoodsIndex<K, C> index;
  std::vector<K> keys(kChunk);
  std::vector<uint64_t> mask(kChunk / 64);
  detail::NonFinite unused;  // the TAR pass counts them
  std::vector<uint32_t> gkeys;
  std::vector<int64_t> gcols, cum(kFewGoods);

  DigitTable table;
  std::vector<int64_t> lanes;
  std::vector<uint32_t> searched(kChunk);
  std::vector<int32_t> slot(kChunk);
  // Rows with many goods and 32-bit keys: counts[u] (entries with exactly u goods ranked
  // at or above them) through the first-digit table; false: not done (64-bit keys, or a
  // table larger than the row), the caller uses the bucket index.
  auto many_goods_by_digit = [&](const S* row, int64_t sc, int64_t G,
                                 const std::vector<C>& codes,
                                 std::vector<int64_t>& counts) -> bool {
    if constexpr (sizeof(K) != 4) {
      return false;
    } else {
      const int64_t n = static_cast<int64_t>(codes.size());
      if (!table.build(codes.data(), n, std::max<int64_t>(4096, G))) return false;
      const C floor = codes[n - 1];
      // four interleaved count arrays: runs of entries between the same two goods do
      // not wait on one counter's store
      const int64_t w = n + 2;  // slot 0 (below the floor) may count at n or n + 1
      lanes.assign(4 * w, 0);
      for (int64_t c0 = 0; c0 < G; c0 += kChunk) {
        const int64_t m = std::min(kChunk, G - c0);
        K* kb = keys.data();
        detail::keys_of<D>(row + c0 * sc, sc, m, kb, unused);
        table.slots(reinterpret_cast<const uint32_t*>(kb), m, slot.data());
        int64_t ns = 0;
        for (int64_t i = 0; i < m; ++i) {
          const uint32_t s = static_cast<uint32_t>(slot[i]);
          const uint32_t v = table[s];
          const uint32_t search = v >> 31;
          // goods at or above the entry: those of higher digits, plus the digit's one
          // good when it ranks at or above (a code of 0: no good, c > 0 here)
          const uint64_t c = rank_code(kb[i], c0 + i);
          const uint32_t idx = (v & ~DigitTable::kSearch) + (table.one(s) >= c ? 1u : 0u);
          searched[ns] = static_cast<uint32_t>(i);
          ns += search;
          lanes[(i & 3) * w + idx] += 1 - search;
        }
        for (int64_t j = 0; j < ns; ++j) {  // entries sharing a digit with a good
          const int64_t i = searched[j];
          const C c = rank_code(kb[i], c0 + i);
          if (c > floor) counts[goods_above(c, codes.data(), n)]++;
        }
      }
      for (int64_t u = 0; u < n; ++u)
        counts[u] += lanes[u] + lanes[w + u] + lanes[2 * w + u] + lanes[3 * w + u];
      return true;
    }
  };

  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    goods.clear();
    for (int64_t c = a.cand_offsets[p]; c < a.cand_offsets[p + 1]; ++c) {
      const uint8_t f = a.cand_flags[c];
      if (f & good_bits) {
        const int64_t j = a.cand_index[c];
        goods.push_back({rank_code(T::key(row[j * sc]), j), f});
      }
    }
    std::sort(goods.begin(), goods.end(), [](const Good& x, const Good& y) { return x.code > y.code; });
    const int64_t n = static_cast<int64_t>(goods.size());
    codes.resize(n);
    for (int64_t i = 0; i < n; ++i) codes[i] = goods[i].code;
    counts.assign(n + 1, 0);
    if (n > 0 && n <= kFewGoods && sizeof(K) == 4 && detail::has_avx2()) {
      // Few goods: count, per good, the entries ranked before it with one vectorised
      // sweep of the key block each (no per-entry lookup); counts[] are the differences.
      gkeys.resize(n);
      gcols.resize(n);
      std::fill(cum.begin(), cum.end(), int64_t(0));
      for (int64_t u = 0; u < n; ++u) {
        gkeys[u] = static_cast<uint32_t>(codes[u] >> (sizeof(C) * 4));
        gcols[u] = static_cast<int64_t>(~static_cast<uint64_t>(codes[u]) & 0xFFFFFFFFull);
      }
      for (int64_t c0 = 0; c0 < G; c0 += kChunk) {
        const int64_t m = std::min(kChunk, G - c0);
        detail::keys_of<D>(row + c0 * sc, sc, m, keys.data(), unused);
        detail::count_preceding(reinterpret_cast<const uint32_t*>(keys.data()), m, c0,
                                gkeys.data(), gcols.data(), static_cast<int>(n), cum.data());
      }
      for (int64_t u = 0; u < n; ++u) counts[u] = cum[u] - (u ? cum[u - 1] : 0);
    } else if (n > 0 && many_goods_by_digit(row, sc, G, codes, counts)) {
      // counted through the first-digit table (DigitTable)
    } else if (n > 0) {
      index.build(codes.data(), n);
      const C floor = index.floor();
      const K floor_key = static_cast<K>(floor >> (sizeof(C) * 4));
      // A block of keys at a time (vectorised); only the entries whose key reaches
      // the lowest good's key are looked up (most of a row when genuine scores
      // stand above the impostors, as a real matcher's do).
      for (int64_t c0 = 0; c0 < G; c0 += kChunk) {
        const int64_t m = std::min(kChunk, G - c0);
        K* kb = keys.data();
        detail::keys_of<D>(row + c0 * sc, sc, m, kb, unused);
        detail::ge_mask(kb, m, floor_key, mask.data());
        for (int64_t w = 0; w * 64 < m; ++w) {
          for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
            const int64_t i = w * 64 + __builtin_ctzll(bits);
            const C c = rank_code(kb[i], c0 + i);
            if (c > floor) counts[index.above(c)]++;
          }
        }
      }
    }
    if (n > 0) {
      // Junk of mode m was counted like any entry: remove it from mode m only.
      for (int m = 0; m < M; ++m) junk_fix[m].assign(n + 1, 0);
      for (int64_t c = a.cand_offsets[p]; c < a.cand_offsets[p + 1]; ++c) {
        const uint8_t f = a.cand_flags[c];
        bool is_junk = false;
        for (int m = 0; m < M; ++m) is_junk |= (f & (2u << (2 * m))) != 0;
        if (!is_junk) continue;
        const int64_t j = a.cand_index[c];
        const int64_t u = goods_above(rank_code(T::key(row[j * sc]), j), codes.data(), n);
        for (int m = 0; m < M; ++m)
          if (f & (2u << (2 * m))) junk_fix[m][u]--;
      }
    }
    for (int m = 0; m < M; ++m) {
      const int64_t out = m * P + p;
      const uint8_t good_m = static_cast<uint8_t>(1u << (2 * m));
      int64_t before = 0, i_m = 0, last = -1;
      double sum = 0.0;
      a.first_pos[out] = -1;
      for (int64_t u = 0; u < n; ++u) {
        // entries counted at u and below (in rank) precede union[u]
        before += counts[u] + junk_fix[m][u];
        if (!(goods[u].flags & good_m)) continue;
        const int64_t pos = before;
        if (i_m == 0) a.first_pos[out] = pos;
        last = pos;
        sum += static_cast<double>(i_m + 1) / static_cast<double>(pos + 1);
        ++i_m;
      }
      a.num_good[out] = i_m;
      a.last_pos[out] = last;
      a.ap[out] = i_m ? sum / static_cast<double>(i_m) : 0.0;
      r_precision_terms(goods, counts, junk_fix[m], n, good_m, i_m, a.r_hits + out, a.map_r + out);
    }
  }
}

}  // namespace

void check_rank_counts_args(const RankCountsArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.num_modes < 1 || a.num_modes > 3)
    throw InvalidArgument("num_modes: expected 1..3, got " + std::to_string(a.num_modes));
  if (a.max_candidates < 0)
    throw InvalidArgument("max_candidates: expected >= 0, got " + std::to_string(a.max_candidates));
  if (key_bits(a.scores.dtype) == 32 && a.scores.cols > (int64_t{1} << 32))
    throw InvalidArgument("scores: at most 2^32 columns for 32-bit keys, got " +
                          std::to_string(a.scores.cols));
}

void rank_counts_cpu(const RankCountsArgs& a, int num_threads) {
  check_rank_counts_args(a);
  if (a.scores.rows == 0) return;
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(a.scores.rows, num_threads, 1,
                        [&](int, int64_t b, int64_t e) { rank_rows<D>(a, b, e); });
    return 0;
  });
}

}  // namespace qme
