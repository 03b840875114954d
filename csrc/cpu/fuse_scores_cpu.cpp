// CPU twin of fuse_scores (qme/fuse_scores.h): rows are split between threads,
// each output entry is the fold of its K normalised scores (fuse_detail), read
// once from the K strided inputs and written once.
#include <string>

#include "parallel.h"
#include "qme/fuse_scores.h"
#include "qme/ops.h"  // check_matrix

namespace qme {

void check_fuse_scores_args(const FuseScoresArgs& a) {
  if (a.num_models < 1 || a.num_models > kFuseMaxModels)
    throw InvalidArgument("scores: expected 1.." + std::to_string(kFuseMaxModels) +
                          " score matrices, got " + std::to_string(a.num_models));
  for (int k = 0; k < a.num_models; ++k) {
    check_matrix(a.scores[k], "scores");
    if (a.scores[k].rows != a.scores[0].rows || a.scores[k].cols != a.scores[0].cols ||
        a.scores[k].dtype != a.scores[0].dtype)
      throw InvalidArgument("scores: every matrix must have the shape and dtype of the first");
    if (a.norm[k] != static_cast<int32_t>(FuseNorm::kAffine) &&
        a.norm[k] != static_cast<int32_t>(FuseNorm::kTanh))
      throw InvalidArgument("norm: unknown normaliser code " + std::to_string(a.norm[k]));
  }
  if (a.rule < 0 || a.rule > static_cast<int32_t>(FuseRule::kAsymAO))
    throw InvalidArgument("rule: unknown rule code " + std::to_string(a.rule));
  if (a.rule == static_cast<int32_t>(FuseRule::kSum) && a.weights == nullptr)
    throw InvalidArgument("weights: required by the weighted-sum rule");
  if (a.weights_stride < 0) throw InvalidArgument("weights: negative row stride");
  if (a.out_dtype != DType::kFloat32 && a.out_dtype != DType::kFloat64)
    throw InvalidArgument("out: expected float32 or float64");
  if (a.out == nullptr && a.scores[0].rows > 0 && a.scores[0].cols > 0)
    throw InvalidArgument("out: missing buffer");
}

namespace {

template <DType D, typename O>
void fuse_rows(const FuseScoresArgs& a, int64_t r0, int64_t r1) {
  const int64_t G = a.scores[0].cols;
  O* out = static_cast<O*>(a.out);
  for (int64_t i = r0; i < r1; ++i)
    for (int64_t j = 0; j < G; ++j)
      out[i * G + j] = static_cast<O>(fuse_detail::fused_score<D>(a, i, j));
}

}  // namespace

void fuse_scores_cpu(const FuseScoresArgs& a, int num_threads) {
  check_fuse_scores_args(a);
  const int64_t P = a.scores[0].rows;
  if (P == 0 || a.scores[0].cols == 0) return;
  dispatch_dtype(a.scores[0].dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    parallel_for_blocks(P, num_threads, 1, [&](int, int64_t b, int64_t e) {
      if (a.out_dtype == DType::kFloat64)
        fuse_rows<D, double>(a, b, e);
      else
        fuse_rows<D, float>(a, b, e);
    });
    return 0;
  });
}

}  // namespace qme
