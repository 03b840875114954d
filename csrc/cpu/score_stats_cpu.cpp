// CPU twin of score_stats (qme/score_stats.h): the parts (16-row x 32768-column tiles)
// are spread over the threads; each part is read row-major into kStatsLanes Welford
// accumulators (lane = column offset mod kStatsLanes, the CUDA thread that owns the
// column), which gives each lane the CUDA thread's sequence of values; the lanes and
// then the parts are merged as the CUDA twin merges them (score_stats.h), so the
// result is bitwise the CUDA one. The independent lanes also break the serial
// Welford dependency chain of one accumulator per chunk.
#include <algorithm>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"  // check_matrix
#include "qme/score_stats.h"

static_assert((qme::kStatsLanes & (qme::kStatsLanes - 1)) == 0 &&
                  qme::kStatsSliceCols % qme::kStatsLanes == 0,
              "lane = column mod kStatsLanes needs a power of two dividing the slice");

namespace qme {

void check_score_stats_args(const ScoreStatsArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.out == nullptr) throw InvalidArgument("score_stats: missing output buffer");
  if ((a.q_pids == nullptr) != (a.g_pids == nullptr))
    throw InvalidArgument("q_pids, g_pids: give both (genuine statistics) or neither");
}

namespace {

using stats_detail::Moments;

template <DType D>
void part_moments(const ScoreStatsArgs& a, int64_t part, int64_t slices, Moments* all,
                  Moments* gen) {
  for (int l = 0; l < kStatsLanes; ++l) all[l] = gen[l] = stats_detail::empty_moments();
  const int64_t c = part / slices, sl = part % slices;
  const int64_t r0 = c * kStatsChunkRows, r1 = std::min(r0 + kStatsChunkRows, a.scores.rows);
  const int64_t j0 = sl * kStatsSliceCols, j1 = std::min(j0 + kStatsSliceCols, a.scores.cols);
  // row-major; j0 is a multiple of kStatsLanes, so column j is lane j % kStatsLanes
  stats_detail::for_each_value<D>(a, r0, r1, j0, j1, 1, [&](int64_t j, double x, bool genuine) {
    const int64_t l = j & (kStatsLanes - 1);
    stats_detail::add_value(all[l], x);
    if (genuine) stats_detail::add_value(gen[l], x);
  });
  stats_detail::tree_merge(all);
  stats_detail::tree_merge(gen);
}

}  // namespace

void score_stats_cpu(const ScoreStatsArgs& a, int num_threads) {
  check_score_stats_args(a);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t slices = stats_slices(G);
  const int64_t parts = P > 0 && G > 0 ? stats_chunks(P) * slices : 0;
  std::vector<Moments> all(static_cast<size_t>(parts)), gen(static_cast<size_t>(parts));
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(parts, num_threads, 1, [&](int, int64_t b, int64_t e) {
      std::vector<Moments> la(kStatsLanes), lg(kStatsLanes);
      for (int64_t p = b; p < e; ++p) {
        part_moments<D>(a, p, slices, la.data(), lg.data());
        all[p] = la[0];
        gen[p] = lg[0];
      }
    });
    return 0;
  });
  // the parts: contiguous runs per lane in order, then the tree (the CUDA merge_kernel)
  std::vector<Moments> la(kStatsLanes), lg(kStatsLanes);
  const int64_t per = (parts + kStatsLanes - 1) / kStatsLanes;
  for (int l = 0; l < kStatsLanes; ++l) {
    la[l] = lg[l] = stats_detail::empty_moments();
    const int64_t b = l * per, e = std::min(b + per, parts);
    for (int64_t p = b; p < e; ++p) {
      la[l] = stats_detail::merge(la[l], all[p]);
      lg[l] = stats_detail::merge(lg[l], gen[p]);
    }
  }
  stats_detail::tree_merge(la.data());
  stats_detail::tree_merge(lg.data());
  stats_detail::write_moments(a.out, la[0]);
  stats_detail::write_moments(a.out + 5, lg[0]);
}

}  // namespace qme
