// fuse_scores: normalise K score matrices and combine them with a fusion rule in
// one pass (docs/definitions.rst, §3): each input element is read once, one output written, no
// normalised copy is ever stored. The per-element math lives here, once, for the
// CPU twin (fuse_scores_cpu.cpp) and the CUDA twin (fuse_scores_cuda.cu).
#pragma once

#include <cmath>
#include <cstdint>

#include "qme/common.h"

#if defined(__CUDACC__) || defined(QME_FUSE_SCORES_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

constexpr int kFuseMaxModels = 8;

// Normaliser of one model: (s - shift) / div, or for the tanh estimator
// 0.5 (tanh(0.01 (s - shift) / div) + 1) with shift = mu_G, div = sigma_G.
// z-score, min-max, RHE and raw are affine with the fitted shift and divisor.
enum class FuseNorm : int32_t { kAffine = 0, kTanh = 1 };
// Rule folding the normalised scores in model order.
enum class FuseRule : int32_t { kSum = 0, kMin = 1, kMax = 2, kAsymAO = 3 };

struct FuseScoresArgs {
  // inputs
  int32_t num_models;                 // K in 1..kFuseMaxModels
  MatrixView scores[kFuseMaxModels];  // K views of (P, G), one dtype, any strides
  int32_t norm[kFuseMaxModels];       // FuseNorm of each model
  double shift[kFuseMaxModels];       // see FuseNorm
  double div[kFuseMaxModels];         // see FuseNorm
  int32_t rule;                       // FuseRule
  const double* weights;              // kSum: (P, K), row stride weights_stride (0: shared)
  int64_t weights_stride;
  double m;                           // kAsymAO exponent
  // outputs
  void* out;                          // (P, G) contiguous, out_dtype (float32 or float64)
  DType out_dtype;
};

// Checks shared by both twins (throws InvalidArgument).
void check_fuse_scores_args(const FuseScoresArgs& args);
void fuse_scores_cpu(const FuseScoresArgs& args, int num_threads);
#if defined(__CUDACC__) || defined(QME_FUSE_SCORES_WITH_CUDA)
void fuse_scores_cuda(const FuseScoresArgs& args, cudaStream_t stream);
#endif

namespace fuse_detail {

// Multiply and add rounded separately on both sides: nvcc would otherwise contract
// a * b + c into one FMA (one rounding) and the twins would differ in the last bit.
QME_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
QME_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
QME_HD double sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
QME_HD double clamp01(double x) { return x < 0.0 ? 0.0 : (x > 1.0 ? 1.0 : x); }

// np.nan_to_num as the QME reference applies it: NaN -> 0, +-inf -> +-FLT_MAX.
QME_HD double nan_to_num(double v) {
  constexpr double kF32Max = 3.4028234663852886e38;
  if (v != v) return 0.0;
  if (v == HUGE_VAL) return kF32Max;
  if (v == -HUGE_VAL) return -kF32Max;
  return v;
}

QME_HD double normalise(double v, int32_t norm, double shift, double div) {
  const double z = sub(nan_to_num(v), shift) / div;
  if (norm == static_cast<int32_t>(FuseNorm::kTanh)) return mul(add(tanh(mul(z, 0.01)), 1.0), 0.5);
  return z;
}

// a^e as PyTorch's pow(tensor, scalar) computes it: its special exponents by
// multiplication (a^2 = a * a, the default m = 2), the others by pow().
QME_HD double pow_scalar(double a, double e) {
  if (e == 1.0) return a;
  if (e == 2.0) return mul(a, a);
  if (e == 3.0) return mul(mul(a, a), a);
  if (e == 0.5) return sqrt(a);
  if (e == -1.0) return 1.0 / a;
  if (e == -2.0) return 1.0 / mul(a, a);
  return pow(a, e);
}

// Asymmetric Hamacher aggregation As(a, b) = a^m b / (a^(m-1) b + 1 - b) on [0, 1],
// 0 where a or b is 0 (qme_ext.fusion.asym_ao).
QME_HD double asym_ao(double a, double b, double m) {
  a = clamp01(a);
  b = clamp01(b);
  if (a == 0.0 || b == 0.0) return 0.0;
  const double num = mul(pow_scalar(a, m), b);
  const double den = sub(add(mul(pow_scalar(a, m - 1.0), b), 1.0), b);
  return clamp01(num / den);
}

// Normalised score (i, j) of model k, read from its strided view.
template <DType D>
QME_HD double model_score(const FuseScoresArgs& a, int k, int64_t i, int64_t j) {
  using S = typename ScoreTraits<D>::Storage;
  const MatrixView& v = a.scores[k];
  const S* p = static_cast<const S*>(v.data) + i * v.stride_row + j * v.stride_col;
  return normalise(ScoreTraits<D>::value(*p), a.norm[k], a.shift[k], a.div[k]);
}

// The fused score of entry (i, j): the models folded in order, as the eager
// reference (qme_ext.reference.fusion.fuse_scores_ref) does it.
template <DType D>
QME_HD double fused_score(const FuseScoresArgs& a, int64_t i, int64_t j) {
  const int32_t rule = a.rule;
  double acc = model_score<D>(a, 0, i, j);
  if (rule == static_cast<int32_t>(FuseRule::kSum)) {
    const double* w = a.weights + i * a.weights_stride;
    acc = mul(acc, w[0]);
    for (int k = 1; k < a.num_models; ++k) acc = add(acc, mul(model_score<D>(a, k, i, j), w[k]));
  } else if (rule == static_cast<int32_t>(FuseRule::kAsymAO)) {
    acc = clamp01(acc);
    for (int k = 1; k < a.num_models; ++k) acc = asym_ao(acc, model_score<D>(a, k, i, j), a.m);
  } else {
    // torch.minimum / torch.maximum: a NaN (a zero divisor's 0 / 0) wins
    const bool take_min = rule == static_cast<int32_t>(FuseRule::kMin);
    for (int k = 1; k < a.num_models; ++k) {
      const double s = model_score<D>(a, k, i, j);
      if (s != s || acc != acc)
        acc = s != s ? s : acc;
      else
        acc = take_min ? (s < acc ? s : acc) : (s > acc ? s : acc);
    }
  }
  return acc;
}

}  // namespace fuse_detail
}  // namespace qme
