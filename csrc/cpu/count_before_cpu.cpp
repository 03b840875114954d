// CPU twin of count_before (qme/count_before.h): per probe row, the row's
// queries are sorted by rank code once, then one pass over the row drops each
// entry after a floor comparison or, when it ranks above the lowest query, bins
// it by binary search; prefix sums over the bins give every query's count.
// The same scheme as rank_counts (rank_code.h), with global columns.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "parallel.h"
#include "qme/count_before.h"
#include "qme/ops.h"  // check_matrix
#include "rank_code.h"

namespace qme {
namespace {

using detail::CodeOf;
using detail::goods_above;
using detail::rank_code;

template <DType D>
void count_rows(const CountBeforeArgs& a, int64_t r0, int64_t r1) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  using C = typename CodeOf<K>::type;
  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int64_t off = a.col_offset;

  std::vector<std::pair<C, int64_t>> queries;  // (code, query index), rank order
  std::vector<C> desc;
  std::vector<int64_t> bins;  // entries whose first preceded query is desc[i]
  for (int64_t p = r0; p < r1; ++p) {
    const int64_t q0 = a.query_offsets[p], q1 = a.query_offsets[p + 1];
    const int64_t n = q1 - q0;
    if (n <= 0) continue;
    queries.clear();
    for (int64_t q = q0; q < q1; ++q)
      queries.emplace_back(rank_code(static_cast<K>(a.query_keys[q]), a.query_cols[q]), q);
    std::sort(queries.begin(), queries.end(),
              [](const auto& x, const auto& y) { return x.first > y.first; });
    desc.resize(n);
    for (int64_t i = 0; i < n; ++i) desc[i] = queries[i].first;
    bins.assign(n + 1, 0);
    const C floor = desc[n - 1];
    const S* row = base + p * sr;
    for (int64_t j = 0; j < G; ++j) {
      const C c = rank_code(T::key(row[j * sc]), off + j);
      if (c > floor) bins[goods_above(c, desc.data(), n)]++;
    }
    int64_t before = 0;
    for (int64_t i = 0; i < n; ++i) {
      before += bins[i];  // everything binned at or above i ranks before query i
      a.counts[queries[i].second] = before;
    }
  }
}

}  // namespace

void check_count_before_args(const CountBeforeArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.col_offset < 0)
    throw InvalidArgument("col_offset: expected >= 0, got " + std::to_string(a.col_offset));
  if (a.max_queries < 0)
    throw InvalidArgument("max_queries: expected >= 0, got " + std::to_string(a.max_queries));
  if (key_bits(a.scores.dtype) == 32 && a.col_offset + a.scores.cols > (int64_t{1} << 32))
    throw InvalidArgument("col_offset: global columns must stay below 2^32 for 32-bit keys");
}

void count_before_cpu(const CountBeforeArgs& a, int num_threads) {
  check_count_before_args(a);
  if (a.scores.rows == 0) return;
  const int64_t P = a.scores.rows;
  const bool narrow = key_bits(a.scores.dtype) == 32;
  for (int64_t q = a.query_offsets[0]; q < a.query_offsets[P]; ++q) {
    if (a.query_cols[q] < 0 || (narrow && a.query_cols[q] >= (int64_t{1} << 32)))
      throw InvalidArgument("query_cols: global columns must lie in [0, 2^32) for 32-bit keys "
                            "(>= 0 for 64-bit keys)");
    if (narrow && (a.query_keys[q] >> 32) != 0)
      throw InvalidArgument("query_keys: 32-bit keys expected for this score dtype");
  }
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(P, num_threads, 1,
                        [&](int, int64_t b, int64_t e) { count_rows<D>(a, b, e); });
    return 0;
  });
}

}  // namespace qme
