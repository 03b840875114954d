// Argument blocks and entry points of the fused QME expert mixture (docs/definitions.rst, §4):
//   F[b, g] = sum_z gate[b, z] * E_z(x[b, :, g]),
//   E_z(x)  = b2_z + sum_h W2_zh * drop(selu(b1_zh + sum_k W1_zhk * (a_zk * x_k + c_zk))).
// The BatchNorm of each expert is folded by the caller into the per-channel affine
// (a, c), so batch statistics and their gradient stay in the autograd graph and the
// kernels only see one affine map per expert and channel.
//
// Precision: x may be stored as float32/float64/float16/bfloat16; everything else
// (parameters, gate, fused output, incoming and outgoing gradients) is the compute
// type: double when x is float64 (so gradcheck can run), float otherwise.
// Every parameter buffer is contiguous; the caller allocates all outputs.
//
// Dropout is a counter-based hash of (seed, expert, b, g, hidden unit), so the
// backward regenerates the forward's mask bit for bit without storing it, and the
// CPU and CUDA twins draw identical masks.
#pragma once

#include <math.h>

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "qme/common.h"

#if defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace qme {

// The CUDA kernels keep the K channel values of each entry in registers, which
// needs K known at compile time; both twins share this limit so they accept the
// same inputs.
constexpr int kExpertMaxChannels = 8;

// A read-only strided 3-D view of the raw scores; strides in elements.
struct ScoreCubeView {
  const void* data;        // (B, K, G) scores of `dtype`
  DType dtype;
  int64_t batch;           // B probes
  int64_t channels;        // K models
  int64_t cols;            // G gallery entries
  int64_t stride_batch;
  int64_t stride_channel;
  int64_t stride_col;
};

// Expert parameters; pointers are to the compute type (float or double), contiguous.
struct ExpertParams {
  const void* a;           // (Z, K) folded BatchNorm scale  gamma / sqrt(var + eps)
  const void* c;           // (Z, K) folded BatchNorm shift  beta - mean * a
  const void* w1;          // (Z, H, K) first Linear weight
  const void* b1;          // (Z, H) first Linear bias
  const void* w2;          // (Z, H) second Linear weight (its single output row)
  const void* b2;          // (Z,) second Linear bias
  const void* gate;        // (B, Z) mixture weights per probe
  int32_t num_experts;     // Z >= 1
  int32_t hidden;          // H = ratio * K >= 1
  double dropout;          // p in [0, 1); 0 disables dropout
  uint64_t seed;           // dropout stream; same seed -> same mask
};

// ---- expert_fuse: forward ----------------------------------------------------
struct ExpertFuseArgs {
  // inputs
  ScoreCubeView x;         // (B, K, G)
  ExpertParams params;
  // outputs
  void* fused;             // (B, G) contiguous, compute type
};
void expert_fuse_cpu(const ExpertFuseArgs& args, int num_threads);

// ---- expert_fuse_bwd: gradients of sum(grad_fused * F) ---------------------------
// Hidden activations and dropout masks are recomputed from x, never stored.
// Parameter gradients are summed per work item and then over items in a fixed
// order, so results do not depend on the number of threads (or on scheduling).
struct ExpertFuseBwdArgs {
  // inputs
  ScoreCubeView x;         // (B, K, G)
  ExpertParams params;
  const void* grad_fused;  // (B, G) contiguous, compute type
  // outputs (compute type, contiguous)
  void* grad_x;            // (B, K, G)
  void* grad_a;            // (Z, K)
  void* grad_c;            // (Z, K)
  void* grad_w1;           // (Z, H, K)
  void* grad_b1;           // (Z, H)
  void* grad_w2;           // (Z, H)
  void* grad_b2;           // (Z,)
  void* grad_gate;         // (B, Z)
};
void expert_fuse_bwd_cpu(const ExpertFuseBwdArgs& args, int num_threads);

#if defined(__CUDACC__) || defined(QME_EXPERT_FUSE_WITH_CUDA)
// CUDA twins: device pointers, caller-provided workspace, enqueue on `stream`.
size_t expert_fuse_cuda_workspace(const ExpertFuseArgs& args);
size_t expert_fuse_bwd_cuda_workspace(const ExpertFuseBwdArgs& args);
void expert_fuse_cuda(const ExpertFuseArgs& args, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);
void expert_fuse_bwd_cuda(const ExpertFuseBwdArgs& args, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);
#endif

// Validation shared by both twins (throws InvalidArgument).
void check_expert_args(const ScoreCubeView& x, const ExpertParams& p);

// ---- math shared by the CPU and CUDA twins -----------------------------------------
namespace expert {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;

QME_HD float em1(float v) { return expm1f(v); }
QME_HD double em1(double v) { return expm1(v); }

// selu(v) and its derivative in one call (the backward needs both).
template <typename T>
QME_HD T selu(T v, T* deriv) {
  const T scale = static_cast<T>(kSeluScale), alpha = static_cast<T>(kSeluAlpha);
  if (v > T(0)) {
    *deriv = scale;
    return scale * v;
  }
  const T e = em1(v);
  *deriv = scale * alpha * (e + T(1));
  return scale * alpha * e;
}

QME_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Keep-multiplier of hidden unit h of expert z at entry (b, g): 0 or 1/(1-p).
// The counter is unique per (z, h, b, g) for any problem that fits in memory;
// two rounds of the splitmix64 finaliser decorrelate neighbouring counters.
// Integer-only, so host and device agree exactly. `threshold` = p * 2^24.
template <typename T>
QME_HD T dropout_keep(uint64_t seed, uint32_t threshold, T keep_scale, int64_t z, int64_t h,
                      int64_t H, int64_t b, int64_t g, int64_t G) {
  const uint64_t unit = static_cast<uint64_t>(z * H + h);
  const uint64_t entry = static_cast<uint64_t>(b) * static_cast<uint64_t>(G) +
                         static_cast<uint64_t>(g);
  const uint64_t r = mix64(mix64(seed ^ (unit * 0x9E3779B97F4A7C15ull)) + entry);
  const uint32_t u24 = static_cast<uint32_t>(r >> 40);  // uniform in [0, 2^24)
  return u24 < threshold ? T(0) : keep_scale;
}

// p -> 24-bit threshold; p = 0 gives 0 (nothing dropped).
inline uint32_t dropout_threshold(double p) {
  if (!(p > 0.0)) return 0u;
  const double t = p * 16777216.0;
  return t >= 16777216.0 ? 16777216u : static_cast<uint32_t>(t + 0.5);
}

// Score storage -> compute type (exact widening).
template <DType D, typename T>
QME_HD T load(typename ScoreTraits<D>::Storage v) {
  if constexpr (D == DType::kFloat16) {
    return static_cast<T>(fp16_bits_to_float(v));
  } else if constexpr (D == DType::kBFloat16) {
    return static_cast<T>(bf16_bits_to_float(v));
  } else {
    return static_cast<T>(v);
  }
}

// The folded BatchNorm affine y = a * x + c, evaluated centred as
//   y = a * (x - m) + r,   m = round_T(-c / a),   r = round_T(c + a * m)  (m, r in double).
// With data of large mean, c ~ -a * mean and a * x + c cancels catastrophically in
// float (a * x carries the rounding error of a number of size |a * mean|); x - m is
// exact for x near m (Sterbenz) and r is only the tiny residual of rounding m, so y
// keeps the accuracy of its own size. The gradient uses the same decomposition:
//   dL/da = sum dy * x = sum dy * (x - m) + m * sum dy,
// so the sums see the small centred values and m * dL/dc is added once, in double.
template <typename T>
struct CentredAffine {
  T a;  // scale
  T m;  // centre, the x at which the affine is ~0
  T r;  // residual: y(m) = r, exactly c + a * m before rounding
};

template <typename T>
QME_HD CentredAffine<T> centred_affine(T a, T c) {
  const double ad = static_cast<double>(a), cd = static_cast<double>(c);
  const double md = -cd / ad;
  if (!(ad != 0.0) || !isfinite(md)) return CentredAffine<T>{a, T(0), c};
  const T m = static_cast<T>(md);
  return CentredAffine<T>{a, m, static_cast<T>(fma(ad, static_cast<double>(m), cd))};
}

// Number of parameter-gradient values per expert, in the order the partial
// buffers store them: a (K), c (K), W1 (H*K), b1 (H), W2 (H), b2 (1).
QME_HD int64_t param_grads_per_expert(int64_t K, int64_t H) { return 2 * K + H * K + 2 * H + 1; }

}  // namespace expert

// ---- CPU per-entry evaluation, shared by the CPU forward and backward -------------
// (Both passes must run the exact same arithmetic so the backward's recomputed
// activations are the forward's.)
namespace cpu_expert {

template <DType D>
using ComputeT = typename std::conditional<D == DType::kFloat64, double, float>::type;

// The chunk loops are also compiled for AVX2 and picked at load time (GCC
// function multiversioning). No FMA is enabled, so both clones round every
// operation identically: on x86-64 the results do not depend on the CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define QME_CPU_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QME_CPU_VECTOR_CLONES
#endif

// Entries are processed kChunk at a time with the entry index innermost, so the
// SELU (the dominant cost) and the small matrix-vector products vectorise.
constexpr int kChunk = 64;

// Branch-free expm1 for v <= 0 in float: exp(v) = 2^n * exp(r), |r| <= ln2/2,
// expm1(v) = 2^n * expm1(r) + (2^n - 1). The degree-7 Taylor series of expm1(r)
// is accurate to < 1 ulp of float on that interval, and being inline arithmetic
// (no libm call) lets the compiler vectorise the SELU loops. double keeps the
// library expm1 (the float64 path exists for gradcheck, not speed).
//
// Everything conditional is done on integer bit patterns: with the default
// -ftrapping-math GCC neither if-converts nor vectorises a float select whose
// arms it has sunk into branches, but integer min / and / or are plain data flow.
inline int32_t f2b(float f) { return static_cast<int32_t>(bits_of_float(f)); }
inline float b2f(int32_t b) { return float_of_bits(static_cast<uint32_t>(b)); }
// c ? a : b as bit operations (c is 0 or -1).
inline float select_bits(int32_t c, float a, float b) { return b2f((f2b(a) & c) | (f2b(b) & ~c)); }

inline float expm1_nonpos(float v) {
  // For v <= 0 (sign bit set) the signed bit pattern grows with |v|, so an
  // integer min clamps v to >= -87 (2^n stays a normal float); -inf and NaN also
  // end up at -87 and are dealt with by the caller.
  v = b2f(std::min(f2b(v), f2b(-87.0f)));
  // Round to nearest by the 1.5 * 2^23 trick (nearbyintf is a libm call on SSE2).
  const float n = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (v - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  const float pm1 = p * r;
  const float s = b2f((static_cast<int32_t>(n) + 127) << 23);
  return s * pm1 + (s - 1.0f);
}

// s[i] = selu(v[i]), ds[i] = selu'(v[i]) for i < kChunk (NaN propagates).
inline void selu_chunk(const float* v, float* s, float* ds) {
  const float scale = static_cast<float>(expert::kSeluScale);
  const float sa = static_cast<float>(expert::kSeluScale * expert::kSeluAlpha);
  for (int i = 0; i < kChunk; ++i) {
    const float u = v[i];
    // -|u| is u on the branch that uses e, and keeps the argument <= 0.
    const float e = expm1_nonpos(b2f(f2b(u) | static_cast<int32_t>(0x80000000u)));
    const int32_t positive = -static_cast<int32_t>(u > 0.0f);
    const int32_t nan = -static_cast<int32_t>(u != u);
    const float neg = select_bits(nan, u, sa * e), dneg = select_bits(nan, u, sa * (e + 1.0f));
    s[i] = select_bits(positive, scale * u, neg);
    ds[i] = select_bits(positive, scale, dneg);
  }
}

inline void selu_chunk(const double* v, double* s, double* ds) {
  for (int i = 0; i < kChunk; ++i) s[i] = expert::selu(v[i], &ds[i]);
}

template <DType D, typename T>
struct Context {
  using S = typename ScoreTraits<D>::Storage;
  const S* x;               // (B, K, G) strided
  int64_t B, K, G, sb, sk, sg, Z, H;
  const T* a;               // (Z, K)
  const T* c;               // (Z, K)
  const T* w1;              // (Z, H, K)
  const T* b1;              // (Z, H)
  const T* w2;              // (Z, H)
  const T* b2;              // (Z,)
  const T* gate;            // (B, Z)
  uint64_t seed;
  uint32_t threshold;       // dropout threshold (0: no dropout)
  T keep_scale;             // 1 / (1 - p)

  Context(const ScoreCubeView& v, const ExpertParams& p)
      : x(static_cast<const S*>(v.data)), B(v.batch), K(v.channels), G(v.cols),
        sb(v.stride_batch), sk(v.stride_channel), sg(v.stride_col), Z(p.num_experts),
        H(p.hidden), a(static_cast<const T*>(p.a)), c(static_cast<const T*>(p.c)),
        w1(static_cast<const T*>(p.w1)), b1(static_cast<const T*>(p.b1)),
        w2(static_cast<const T*>(p.w2)), b2(static_cast<const T*>(p.b2)),
        gate(static_cast<const T*>(p.gate)), seed(p.seed),
        threshold(expert::dropout_threshold(p.dropout)),
        keep_scale(static_cast<T>(1.0 / (1.0 - p.dropout))) {}

  // Channel values of entries (b, g0 .. g0 + n), zero-padded to kChunk.
  void load_chunk(int64_t b, int64_t g0, int64_t n, T (*xs)[kChunk]) const {  // xs: (K, kChunk)
    for (int64_t k = 0; k < K; ++k) {
      const S* px = x + b * sb + k * sk + g0 * sg;
      T* dst = xs[k];
      if (sg == 1) {
        for (int64_t i = 0; i < n; ++i) dst[i] = expert::load<D, T>(px[i]);
      } else {
        for (int64_t i = 0; i < n; ++i) dst[i] = expert::load<D, T>(px[i * sg]);
      }
      for (int64_t i = n; i < kChunk; ++i) dst[i] = T(0);
    }
  }

  // Dropout multipliers of hidden unit (z, h) for entries (b, g0 .. g0 + kChunk).
  void keep_chunk(int64_t z, int64_t h, int64_t b, int64_t g0, T* m) const {  // m: (kChunk,)
    for (int i = 0; i < kChunk; ++i)
      m[i] = expert::dropout_keep<T>(seed, threshold, keep_scale, z, h, H, b, g0 + i, G);
  }
};

}  // namespace cpu_expert
}  // namespace qme
