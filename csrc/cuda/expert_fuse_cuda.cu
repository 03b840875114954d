// CUDA twin of expert_fuse (expert_fuse_cpu.cpp): reads each x[b, :, g] once,
// evaluates all Z experts in registers and writes F[b, g] once. The pass is
// bandwidth-bound for small experts (K reads + 1 write per entry); the SELU
// exponentials are the only other cost that matters.
#include <cuda_runtime.h>

#include "expert_fuse_common.cuh"

namespace qme {
namespace {

using namespace expert_cuda;

template <DType D, typename T, int KC>
__global__ void __launch_bounds__(kThreads)
    fuse_kernel(ScoreCubeView xv,   // (B, K, G) strided scores
                ExpertParams p,     // parameters, compute type T
                uint32_t threshold, T keep_scale, int64_t tiles,
                T* out) {           // (B, G) fused scores
  using S = typename ScoreTraits<D>::Storage;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t item = blockIdx.x;
  const int64_t b = item / tiles, tile = item - b * tiles;
  const int Z = p.num_experts, H = p.hidden;
  const int64_t G = xv.cols;
  const Staged<T> P = stage_params<T>(p, KC, H, b, reinterpret_cast<T*>(smem_raw));
  const S* xb = static_cast<const S*>(xv.data) + b * xv.stride_batch;

  constexpr int kPerThread = per_thread<KC>();
  constexpr int64_t kSubTile = int64_t{kThreads} * kPerThread;
  for (int sub = 0; sub < kEntriesPerThread / kPerThread; ++sub) {
    const int64_t g0 = tile * kTile + sub * kSubTile + threadIdx.x;
    if (tile * kTile + sub * kSubTile >= G) break;  // uniform across the block
    T x[kPerThread][KC];
    T acc[kPerThread];
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t g = g0 + int64_t{e} * kThreads;
      const bool ok = g < G;
#pragma unroll
      for (int k = 0; k < KC; ++k)
        x[e][k] = ok ? expert::load<D, T>(xb[k * xv.stride_channel + g * xv.stride_col]) : T(0);
      acc[e] = T(0);
    }
    for (int z = 0; z < Z; ++z) {
      T y[kPerThread][KC];
      T ez[kPerThread];
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
#pragma unroll
        for (int k = 0; k < KC; ++k)
          y[e][k] = P.a[z * KC + k] * (x[e][k] - P.m[z * KC + k]) + P.r[z * KC + k];
        ez[e] = P.b2[z];
      }
      for (int h = 0; h < H; ++h) {
        const T* w = P.w1 + (z * H + h) * KC;
        const T bias = P.b1[z * H + h], w2 = P.w2[z * H + h];
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
          T pre = bias;
#pragma unroll
          for (int k = 0; k < KC; ++k) pre += w[k] * y[e][k];
          T d;
          T s = expert::selu(pre, &d);
          if (threshold)
            s *= expert::dropout_keep<T>(p.seed, threshold, keep_scale, z, h, H, b,
                                         g0 + int64_t{e} * kThreads, G);
          ez[e] += w2 * s;
        }
      }
      const T gz = P.gate[z];
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) acc[e] += gz * ez[e];
    }
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t g = g0 + int64_t{e} * kThreads;
      if (g < G) out[b * G + g] = acc[e];
    }
  }
}

}  // namespace

size_t expert_fuse_cuda_workspace(const ExpertFuseArgs&) { return 0; }

void expert_fuse_cuda(const ExpertFuseArgs& a, void*, size_t, cudaStream_t stream) {
  check_expert_args(a.x, a.params);
  const int64_t B = a.x.batch, G = a.x.cols;
  if (B * G == 0) return;
  if (a.fused == nullptr) throw InvalidArgument("fused: null output pointer");
  const Grid grid = make_grid(B, G);
  if (grid.items > 0x7FFFFFFF) throw InvalidArgument("expert_fuse: problem too large for one launch");
  const uint32_t threshold = expert::dropout_threshold(a.params.dropout);
  dispatch_dtype(a.x.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = ComputeT<D>;
    dispatch_channels(a.x.channels, [&](auto kc) {
      constexpr int KC = decltype(kc)::value;
      const size_t smem =
          static_cast<size_t>(param_elems(a.params.num_experts, KC, a.params.hidden)) * sizeof(T);
      auto kernel = fuse_kernel<D, T, KC>;
      prepare_smem(kernel, smem);
      kernel<<<static_cast<unsigned>(grid.items), kThreads, smem, stream>>>(
          a.x, a.params, threshold, static_cast<T>(1.0 / (1.0 - a.params.dropout)), grid.tiles,
          static_cast<T*>(a.fused));
      QME_CUDA_CHECK_LAUNCH();
    });
    return 0;
  });
}

}  // namespace qme
