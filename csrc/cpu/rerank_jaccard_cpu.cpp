// CPU twin of rerank_jaccard (qme/rerank_jaccard.h): probe rows split over threads;
// each row of out is zeroed, then every column of the probe's encoding (ascending)
// adds its minima to the gallery entries of that column's inverted list. The output
// row is the accumulator, so no scratch is needed.
#include <algorithm>
#include <string>

#include "parallel.h"
#include "qme/common.h"
#include "qme/rerank_jaccard.h"

namespace qme {

void check_rerank_jaccard_args(const RerankJaccardArgs& a) {
  if (a.num_probes < 0 || a.num_gallery < 0 || a.num_columns < 0)
    throw InvalidArgument("rerank_jaccard: sizes must be >= 0, got P=" +
                          std::to_string(a.num_probes) + " G=" + std::to_string(a.num_gallery) +
                          " N=" + std::to_string(a.num_columns));
  if (a.num_probes > 0 && a.num_gallery > 0 &&
      (!a.probe_offsets || !a.inv_offsets || !a.out))
    throw InvalidArgument("rerank_jaccard: missing offsets or output buffer");
}

void rerank_jaccard_cpu(const RerankJaccardArgs& a, int num_threads) {
  check_rerank_jaccard_args(a);
  if (a.num_probes == 0 || a.num_gallery == 0) return;
  const int64_t G = a.num_gallery;
  parallel_for_blocks(a.num_probes, num_threads, 1, [&](int, int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      double* row = a.out + p * G;
      std::fill(row, row + G, 0.0);
      for (int64_t t = a.probe_offsets[p]; t < a.probe_offsets[p + 1]; ++t) {
        const int64_t k = a.probe_cols[t];
        const double v = a.probe_vals[t];
        for (int64_t u = a.inv_offsets[k]; u < a.inv_offsets[k + 1]; ++u)
          row[a.inv_rows[u]] += std::min(v, a.inv_vals[u]);
      }
    }
  });
}

}  // namespace qme
