// CPU twin of score_stats (qme/score_stats.h): the fixed row chunks are spread over
// the threads, each chunk accumulated row-major, then merged in chunk order.
#include <vector>

#include "parallel.h"
#include "qme/ops.h"  // check_matrix
#include "qme/score_stats.h"

namespace qme {

void check_score_stats_args(const ScoreStatsArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.out == nullptr) throw InvalidArgument("score_stats: missing output buffer");
  if ((a.q_pids == nullptr) != (a.g_pids == nullptr))
    throw InvalidArgument("q_pids, g_pids: give both (genuine statistics) or neither");
}

void score_stats_cpu(const ScoreStatsArgs& a, int num_threads) {
  using stats_detail::Moments;
  check_score_stats_args(a);
  const int64_t P = a.scores.rows;
  const int64_t chunks = (P + kStatsChunkRows - 1) / kStatsChunkRows;
  std::vector<Moments> all(static_cast<size_t>(chunks)), gen(static_cast<size_t>(chunks));
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(chunks, num_threads, 1, [&](int, int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        all[c] = stats_detail::empty_moments();
        gen[c] = stats_detail::empty_moments();
        const int64_t r0 = c * kStatsChunkRows;
        const int64_t r1 = r0 + kStatsChunkRows < P ? r0 + kStatsChunkRows : P;
        stats_detail::chunk_moments<D>(a, r0, r1, 0, a.scores.cols, 1, all[c], gen[c]);
      }
    });
    return 0;
  });
  Moments total = stats_detail::empty_moments(), genuine = stats_detail::empty_moments();
  for (int64_t c = 0; c < chunks; ++c) {
    total = stats_detail::merge(total, all[c]);
    genuine = stats_detail::merge(genuine, gen[c]);
  }
  stats_detail::write_moments(a.out, total);
  stats_detail::write_moments(a.out + 5, genuine);
}

}  // namespace qme
