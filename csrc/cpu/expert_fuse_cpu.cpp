// CPU twin of expert_fuse: one pass over the (B, K, G) scores, each entry's
// K-vector goes through all Z experts and the gated sum is written once. Hidden
// units are consumed as they are produced (never stored), so the working set per
// entry is the K channel values plus one accumulator per expert.
#include <algorithm>
#include <string>

#include "qme/expert_fuse.h"
#include "parallel.h"

namespace qme {

void check_expert_args(const ScoreCubeView& x, const ExpertParams& p) {
  if (x.batch < 0 || x.channels < 0 || x.cols < 0)
    throw InvalidArgument("x: negative shape");
  if (x.stride_batch < 0 || x.stride_channel < 0 || x.stride_col < 0)
    throw InvalidArgument("x: negative strides are not supported");
  if (static_cast<int>(x.dtype) < 0 || static_cast<int>(x.dtype) > 3)
    throw InvalidArgument("x: unsupported dtype code " + std::to_string(static_cast<int>(x.dtype)));
  if (x.channels < 1 || x.channels > kExpertMaxChannels)
    throw InvalidArgument("x: expected 1.." + std::to_string(kExpertMaxChannels) +
                          " model channels, got " + std::to_string(x.channels));
  if (p.num_experts < 1) throw InvalidArgument("num_experts: expected >= 1");
  if (p.hidden < 1) throw InvalidArgument("hidden: expected >= 1");
  if (!(p.dropout >= 0.0 && p.dropout < 1.0))
    throw InvalidArgument("dropout: expected 0 <= p < 1, got " + std::to_string(p.dropout));
  if (x.batch * x.cols > 0 && (x.data == nullptr || p.a == nullptr || p.c == nullptr ||
                               p.w1 == nullptr || p.b1 == nullptr || p.w2 == nullptr ||
                               p.b2 == nullptr || p.gate == nullptr))
    throw InvalidArgument("expert_fuse: null pointer for a non-empty problem");
}

namespace {

template <DType D, typename T>
QME_CPU_VECTOR_CLONES void fuse_chunks(const ExpertFuseArgs& a, int64_t u0, int64_t u1) {
  using cpu_expert::kChunk;
  const cpu_expert::Context<D, T> ctx(a.x, a.params);
  const int64_t K = ctx.K, H = ctx.H, Z = ctx.Z, G = ctx.G;
  const int64_t chunks = (G + kChunk - 1) / kChunk;
  T* out = static_cast<T*>(a.fused);
  alignas(64) T xs[kExpertMaxChannels][kChunk];
  alignas(64) T y[kExpertMaxChannels][kChunk];
  alignas(64) T pre[kChunk], s[kChunk], ds[kChunk], m[kChunk], ez[kChunk], acc[kChunk];
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t b = u / chunks, g0 = (u - b * chunks) * kChunk;
    const int64_t n = std::min<int64_t>(kChunk, G - g0);
    ctx.load_chunk(b, g0, n, xs);
    for (int i = 0; i < kChunk; ++i) acc[i] = T(0);
    for (int64_t z = 0; z < Z; ++z) {
      for (int64_t k = 0; k < K; ++k) {
        const auto f = expert::centred_affine(ctx.a[z * K + k], ctx.c[z * K + k]);
        for (int i = 0; i < kChunk; ++i) y[k][i] = f.a * (xs[k][i] - f.m) + f.r;
      }
      const T bz = ctx.b2[z];
      for (int i = 0; i < kChunk; ++i) ez[i] = bz;
      for (int64_t h = 0; h < H; ++h) {
        const T* w = ctx.w1 + (z * H + h) * K;
        const T bias = ctx.b1[z * H + h], w2 = ctx.w2[z * H + h];
        for (int i = 0; i < kChunk; ++i) pre[i] = bias;
        for (int64_t k = 0; k < K; ++k) {
          const T wk = w[k];
          for (int i = 0; i < kChunk; ++i) pre[i] += wk * y[k][i];
        }
        cpu_expert::selu_chunk(pre, s, ds);
        if (ctx.threshold) {
          ctx.keep_chunk(z, h, b, g0, m);
          for (int i = 0; i < kChunk; ++i) ez[i] += w2 * (s[i] * m[i]);
        } else {
          for (int i = 0; i < kChunk; ++i) ez[i] += w2 * s[i];
        }
      }
      const T gz = ctx.gate[b * Z + z];
      for (int i = 0; i < kChunk; ++i) acc[i] += gz * ez[i];
    }
    T* o = out + b * G + g0;
    for (int64_t i = 0; i < n; ++i) o[i] = acc[i];
  }
}

}  // namespace

void expert_fuse_cpu(const ExpertFuseArgs& a, int num_threads) {
  check_expert_args(a.x, a.params);
  const int64_t n = a.x.batch * a.x.cols;
  if (n == 0) return;
  if (a.fused == nullptr) throw InvalidArgument("fused: null output pointer");
  dispatch_dtype(a.x.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = cpu_expert::ComputeT<D>;
    // Entries are independent: any split gives identical results.
    const int64_t units = a.x.batch * ((a.x.cols + cpu_expert::kChunk - 1) / cpu_expert::kChunk);
    parallel_for_blocks(units, num_threads, 64,
                        [&](int, int64_t b, int64_t e) { fuse_chunks<D, T>(a, b, e); });
    return 0;
  });
}

}  // namespace qme
