// CPU twin of rank_counts: per probe, one pass over its row counts how many
// entries precede each good entry (sort-free CMC/AP, SPEC 2.1).
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
