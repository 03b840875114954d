// Argument blocks and entry points of the quality-aware recognition ops
// (docs/definitions.rst, §5): the QMagFace score epilogue and batched template aggregation.
// Same conventions as ops.h: raw pointers, int64 sizes, strides in elements,
// every output buffer allocated by the caller. CUDA twins take the same blocks
// (device pointers) and a stream; neither op needs a workspace.
#pragma once

#include <cstdint>
#include <cstring>

#include "qme/common.h"

#if defined(__CUDACC__) || defined(QME_QUALITY_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

// A writable strided 2-D view (the output twin of MatrixView).
struct MutableMatrixView {
  void* data;  // (rows, cols) of `dtype`
  DType dtype;
  int64_t rows;
  int64_t cols;
  int64_t stride_row;
  int64_t stride_col;
};

// ---- qmagface_epilogue: quality-aware scores of one (p, g) tile -------------
// out[i, j] = s + min(0, beta * s - alpha) * min(q_probe[i], q_gallery[j]),
// s = cos[i, j]. `cos` and `out` may alias element for element (each element is
// read before it is written), so the tile can be rewritten in place.
struct QMagFaceEpilogueArgs {
  // inputs
  MatrixView cos;               // (p, g) cosine similarities of normalised features
  const double* q_probe;        // (p,) feature norms (MagFace quality) of the probe rows
  const double* q_gallery;      // (g,) feature norms of the gallery columns
  double alpha;                 // QMagFace alpha (omega intercept, sign as published)
  double beta;                  // QMagFace beta (omega slope)
  // outputs
  MutableMatrixView out;        // (p, g) quality-aware scores
};
void qmagface_epilogue_cpu(const QMagFaceEpilogueArgs& args, int num_threads);

// ---- template_aggregate: weighted means of CSR segments of feature rows -----
// For t in [0, T): W_t = sum_{i in seg t} w_i, u_t = sum w_i f_i / W_t,
// templates[t] = u_t (or u_t / |u_t| when normalize). Segments with W_t == 0
// (empty, or all weights zero) give a zero template, W_t = 0 and norm 0.
// Accumulation is float64 on the CPU; on the GPU float32 unless the weights
// (and so the outputs) are float64.
struct TemplateAggregateArgs {
  // inputs
  MatrixView features;          // (N, D) float32/float64/float16/bfloat16
  const void* weights;          // (N,) float32, or float64 (then outputs are float64)
  bool weights_f64;             // dtype of weights, templates, weight_sum and norm
  const int64_t* offsets;       // (T + 1,) nondecreasing, offsets[0] = 0, offsets[T] = N
  int64_t num_templates;        // T
  bool normalize;               // L2-normalise each template
  // outputs
  void* templates;              // (T, D) contiguous, dtype of weights
  void* weight_sum;             // (T,) W_t
  void* norm;                   // (T,) |u_t| (before normalisation)
};
void template_aggregate_cpu(const TemplateAggregateArgs& args, int num_threads);

// Validation shared by both twins (throws InvalidArgument). Offsets are checked
// by the Python layer (they live on the device for the CUDA twin).
void check_qmagface_epilogue(const QMagFaceEpilogueArgs& args);
void check_template_aggregate(const TemplateAggregateArgs& args);

#if defined(__CUDACC__) || defined(QME_QUALITY_WITH_CUDA)
void qmagface_epilogue_cuda(const QMagFaceEpilogueArgs& args, cudaStream_t stream);
void template_aggregate_cuda(const TemplateAggregateArgs& args, cudaStream_t stream);
#endif

// ---- float -> storage encoding (round to nearest even), host and device ------
QME_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u = bits_of_float(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

QME_HD uint16_t float_to_fp16_bits(float f) {
  uint32_t u = bits_of_float(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7FFFFFFFu;
  if (absu > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (absu >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (absu < 0x38800000u) {
    // subnormal half (or zero): value = mantissa * 2^-24, rounded to nearest even
    if (absu < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0
    const uint32_t e = absu >> 23;
    const uint32_t man = (absu & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24 bits to drop
    uint32_t h = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((absu - 0x38000000u) >> 13);
  const uint32_t rem = absu & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Store a float/double into an element of `dtype`.
template <DType D> struct StoreTraits;
template <> struct StoreTraits<DType::kFloat32> {
  using Storage = float;
  template <typename V> static QME_HD Storage encode(V v) { return static_cast<float>(v); }
};
template <> struct StoreTraits<DType::kFloat64> {
  using Storage = double;
  template <typename V> static QME_HD Storage encode(V v) { return v; }
};
template <> struct StoreTraits<DType::kFloat16> {
  using Storage = uint16_t;
  template <typename V> static QME_HD Storage encode(V v) { return float_to_fp16_bits(static_cast<float>(v)); }
};
template <> struct StoreTraits<DType::kBFloat16> {
  using Storage = uint16_t;
  template <typename V> static QME_HD Storage encode(V v) { return float_to_bf16_bits(static_cast<float>(v)); }
};

// The QMagFace epilogue of one pair (docs/definitions.rst, §5), the one rule of both twins:
//   q = min(qp, qg), NaN-propagating like torch.minimum (a NaN quality gives NaN);
//   omega = min(0, beta s - alpha) (w < 0 ? w : 0);  out = omega q + s.
// float32 input and output: float arithmetic (epilogue_f32), every other dtype pair:
// double, rounded once on the store (epilogue_f64). Every multiply and add is rounded
// on its own (the _rn intrinsics on CUDA, -ffp-contract=off on the CPU), so the twins
// agree bit for bit.
namespace quality_detail {
template <typename T> QME_HD T nan_min(T qp, T qg) { return (qp < qg || qp != qp) ? qp : qg; }
#if defined(__CUDA_ARCH__)
QME_HD float mul(float a, float b) { return __fmul_rn(a, b); }
QME_HD float add(float a, float b) { return __fadd_rn(a, b); }
QME_HD float sub(float a, float b) { return __fsub_rn(a, b); }
QME_HD double mul(double a, double b) { return __dmul_rn(a, b); }
QME_HD double add(double a, double b) { return __dadd_rn(a, b); }
QME_HD double sub(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T> QME_HD T mul(T a, T b) { return a * b; }
template <typename T> QME_HD T add(T a, T b) { return a + b; }
template <typename T> QME_HD T sub(T a, T b) { return a - b; }
#endif
}  // namespace quality_detail

// T = float: epilogue_f32; T = double: epilogue_f64 (see above).
template <typename T>
QME_HD T qmagface_pair(T s, T qp, T qg, T alpha, T beta) {
  using namespace quality_detail;
  const T q = nan_min(qp, qg);
  const T w = sub(mul(beta, s), alpha);
  return add(mul(w < T(0) ? w : T(0), q), s);
}
QME_HD float epilogue_f32(float s, float qp, float qg, float alpha, float beta) {
  return qmagface_pair<float>(s, qp, qg, alpha, beta);
}
QME_HD double epilogue_f64(double s, double qp, double qg, double alpha, double beta) {
  return qmagface_pair<double>(s, qp, qg, alpha, beta);
}

}  // namespace qme
