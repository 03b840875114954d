// CPU twin of template_aggregate: quality-weighted means of CSR segments of
// feature rows (QWFA / QMagFace templates), one template per task, float64
// accumulation so the result does not depend on the thread count.
#include <cmath>
#include <string>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"
#include "qme/quality_ops.h"

namespace qme {
namespace {

template <DType D, typename W>
void aggregate_range(const TemplateAggregateArgs& a, int64_t t0, int64_t t1) {
  using S = typename ScoreTraits<D>::Storage;
  const S* f = static_cast<const S*>(a.features.data);
  const W* w = static_cast<const W*>(a.weights);
  W* out = static_cast<W*>(a.templates);
  W* wsum = static_cast<W*>(a.weight_sum);
  W* nrm = static_cast<W*>(a.norm);
  const int64_t Dm = a.features.cols;
  std::vector<double> acc(static_cast<size_t>(Dm));
  for (int64_t t = t0; t < t1; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    double W_t = 0.0;
    for (int64_t i = a.offsets[t]; i < a.offsets[t + 1]; ++i) {
      const double wi = static_cast<double>(w[i]);
      if (wi == 0.0) continue;  // skip the row: zero weight contributes nothing (even NaN-free)
      W_t += wi;
      const S* row = f + i * a.features.stride_row;
      for (int64_t d = 0; d < Dm; ++d)
        acc[d] += wi * ScoreTraits<D>::value(row[d * a.features.stride_col]);
    }
    W* o = out + t * Dm;
    if (W_t == 0.0) {
      for (int64_t d = 0; d < Dm; ++d) o[d] = W(0);
      wsum[t] = W(0);
      nrm[t] = W(0);
      continue;
    }
    double sq = 0.0;
    for (int64_t d = 0; d < Dm; ++d) {
      acc[d] /= W_t;
      sq += acc[d] * acc[d];
    }
    const double n = std::sqrt(sq);
    // A zero mean (cancelling features) stays zero rather than becoming NaN.
    const double scale = (a.normalize && n > 0.0) ? 1.0 / n : 1.0;
    for (int64_t d = 0; d < Dm; ++d) o[d] = static_cast<W>(acc[d] * scale);
    wsum[t] = static_cast<W>(W_t);
    nrm[t] = static_cast<W>(n);
  }
}

}  // namespace

void check_template_aggregate(const TemplateAggregateArgs& a) {
  check_matrix(a.features, "features");
  if (a.num_templates < 0) throw InvalidArgument("offsets: need at least one entry");
  // D = 0 features give (T, 0) templates: an empty buffer may have a null address
  if (a.num_templates > 0 && (!a.offsets || !a.weight_sum || !a.norm ||
                              (a.features.cols > 0 && !a.templates)))
    throw InvalidArgument("template_aggregate: missing buffer");
  if (a.features.rows > 0 && !a.weights) throw InvalidArgument("weights: missing buffer");
}

void template_aggregate_cpu(const TemplateAggregateArgs& a, int num_threads) {
  check_template_aggregate(a);
  const int64_t T = a.num_templates, N = a.features.rows;
  if (T == 0) return;
  if (a.offsets[0] != 0 || a.offsets[T] != N)
    throw InvalidArgument("offsets: expected offsets[0] == 0 and offsets[-1] == N = " +
                          std::to_string(N));
  for (int64_t t = 0; t < T; ++t)
    if (a.offsets[t + 1] < a.offsets[t]) throw InvalidArgument("offsets: must be nondecreasing");
  dispatch_dtype(a.features.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    const int64_t min_t = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, N / T + 1));
    parallel_for_blocks(T, num_threads, min_t, [&](int, int64_t b, int64_t e) {
      if (a.weights_f64) aggregate_range<D, double>(a, b, e);
      else aggregate_range<D, float>(a, b, e);
    });
  });
}

}  // namespace qme
