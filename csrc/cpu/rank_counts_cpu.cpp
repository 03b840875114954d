// CPU twin of rank_counts: per probe, one pass over its row counts how many
// entries precede each good entry (sort-free CMC/AP, SPEC 2.1).
#include <algorithm>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"

namespace qme {
namespace {

template <typename K>
struct Entry {
  K key;
  int64_t col;
};

// `a` ranks before `b`: higher key first, lower gallery index first on ties.
template <typename K>
inline bool precedes(K ka, int64_t ja, const Entry<K>& b) {
  return ka > b.key || (ka == b.key && ja < b.col);
}

// First position i in `goods` (sorted by rank) such that the entry precedes goods[i].
template <typename K>
inline int64_t first_preceded(K k, int64_t j, const std::vector<Entry<K>>& goods) {
  int64_t lo = 0, hi = static_cast<int64_t>(goods.size());
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (precedes(k, j, goods[mid])) hi = mid; else lo = mid + 1;
  }
  return lo;
}

template <typename K>
struct ModeScratch {
  std::vector<Entry<K>> goods, junk;
  std::vector<int64_t> before;  // diff array, then prefix sums: entries ranked before good i
};

template <DType D>
void rank_rows(const RankCountsArgs& a, int64_t r0, int64_t r1) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int M = a.num_modes;
  ModeScratch<K> ms[3];

  for (int64_t p = r0; p < r1; ++p) {
    const S* row = base + p * sr;
    bool any_good = false;
    for (int m = 0; m < M; ++m) { ms[m].goods.clear(); ms[m].junk.clear(); }
    for (int64_t c = a.cand_offsets[p]; c < a.cand_offsets[p + 1]; ++c) {
      const int64_t j = a.cand_index[c];
      const uint8_t f = a.cand_flags[c];
      const K k = T::key(row[j * sc]);
      for (int m = 0; m < M; ++m) {
        if (f & (1u << (2 * m))) { ms[m].goods.push_back({k, j}); any_good = true; }
        else if (f & (2u << (2 * m))) ms[m].junk.push_back({k, j});
      }
    }
    Entry<K> floor{0, 0};
    bool have_floor = false;
    for (int m = 0; m < M; ++m) {
      auto& g = ms[m].goods;
      std::sort(g.begin(), g.end(), [](const Entry<K>& x, const Entry<K>& y) {
        return precedes(x.key, x.col, y);
      });
      ms[m].before.assign(g.size() + 1, 0);
      if (!g.empty() && (!have_floor || precedes(floor.key, floor.col, g.back()))) {
        floor = g.back();
        have_floor = true;
      }
    }
    if (any_good) {
      // The single pass: most entries rank below every good entry and stop at
      // the first comparison.
      if (sc == 1) {
        for (int64_t j = 0; j < G; ++j) {
          const K k = T::key(row[j]);
          if (!precedes(k, j, floor)) continue;
          for (int m = 0; m < M; ++m) ms[m].before[first_preceded(k, j, ms[m].goods)]++;
        }
      } else {
        for (int64_t j = 0; j < G; ++j) {
          const K k = T::key(row[j * sc]);
          if (!precedes(k, j, floor)) continue;
          for (int m = 0; m < M; ++m) ms[m].before[first_preceded(k, j, ms[m].goods)]++;
        }
      }
      // Junk entries were counted like any other: take them back out.
      for (int m = 0; m < M; ++m)
        for (const auto& e : ms[m].junk) ms[m].before[first_preceded(e.key, e.col, ms[m].goods)]--;
    }
    for (int m = 0; m < M; ++m) {
      const int64_t n = static_cast<int64_t>(ms[m].goods.size());
      const int64_t out = m * P + p;
      a.num_good[out] = n;
      if (n == 0) { a.first_pos[out] = -1; a.ap[out] = 0.0; continue; }
      int64_t pos = 0;
      double sum = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        pos += ms[m].before[i];
        sum += static_cast<double>(i + 1) / static_cast<double>(pos + 1);
        if (i == 0) a.first_pos[out] = pos;
      }
      a.ap[out] = sum / static_cast<double>(n);
    }
  }
}

}  // namespace

void rank_counts_cpu(const RankCountsArgs& a, int num_threads) {
  check_matrix(a.scores, "scores");
  if (a.num_modes < 1 || a.num_modes > 3)
    throw InvalidArgument("num_modes: expected 1..3, got " + std::to_string(a.num_modes));
  if (a.scores.rows == 0) return;
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(a.scores.rows, num_threads, 1,
                        [&](int, int64_t b, int64_t e) { rank_rows<D>(a, b, e); });
    return 0;
  });
}

}  // namespace qme
