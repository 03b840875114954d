// Device helpers shared by the expert_fuse forward and backward CUDA twins.
//
// Work decomposition (both passes): a block owns one probe row b and one tile of
// kTile gallery columns, walked in sub-tiles of kThreads * per_thread<K>()
// entries; each thread keeps per_thread<K>() entries' K channel values in
// registers (K is a template parameter so those arrays are registers, not local
// memory). Hidden units are
// produced and consumed one at a time, so nothing of size H per entry is stored.
// All expert parameters and the row's gate are staged once per block in shared
// memory: every thread reads the same address, which is a broadcast.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda_check.cuh"
#include "qme/expert_fuse.h"

namespace qme {
namespace expert_cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Entries per thread over the whole tile; a sub-tile gives each thread
// per_thread<K>() of them at once (fewer for large K, to stay clear of spills).
constexpr int kEntriesPerThread = 16;
constexpr int64_t kTile = int64_t{kThreads} * kEntriesPerThread;

template <int K>
constexpr int per_thread() { return K <= 4 ? 4 : 2; }
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr size_t kDefaultSmem = 48 * 1024;

template <DType D>
using ComputeT = typename std::conditional<D == DType::kFloat64, double, float>::type;

struct Grid {
  int64_t tiles;  // column tiles per row
  int64_t items;  // blocks: B * tiles
};

inline Grid make_grid(int64_t B, int64_t G) {
  Grid g{};
  g.tiles = (G + kTile - 1) / kTile;
  g.items = B * g.tiles;
  return g;
}

// Elements of the staged parameter block: a, m, r (the centred affine, see
// expert::centred_affine), w1, b1, w2, b2 and the row's gate.
QME_HD int64_t param_elems(int64_t Z, int64_t K, int64_t H) {
  return Z * (3 * K + H * K + 2 * H + 1) + Z;
}

// Views into the staged parameters (shared memory).
template <typename T>
struct Staged {
  const T* a;     // (Z, K) scale
  const T* m;     // (Z, K) centre: y = a * (x - m) + r
  const T* r;     // (Z, K) residual
  const T* w1;    // (Z, H, K)
  const T* b1;    // (Z, H)
  const T* w2;    // (Z, H)
  const T* b2;    // (Z,)
  const T* gate;  // (Z,) gate of row b
};

// Stages experts [z0, z0 + zn) (all of them by default); the views are indexed by
// the local expert z - z0. sm: (param_elems(zn, K, H),) shared memory.
template <typename T>
__device__ Staged<T> stage_params(const ExpertParams& p, int K, int H, int64_t b, T* sm,
                                  int z0 = 0, int zn = -1) {
  const int Zall = p.num_experts;
  const int Z = zn < 0 ? Zall : zn;
  const int nk = Z * K, nhk = Z * H * K, nh = Z * H;
  T* sa = sm;
  T* sm_ = sa + nk;
  T* sr = sm_ + nk;
  T* sw1 = sr + nk;
  T* sb1 = sw1 + nhk;
  T* sw2 = sb1 + nh;
  T* sb2 = sw2 + nh;
  T* sg = sb2 + Z;
  const T* ga = static_cast<const T*>(p.a) + z0 * K;
  const T* gc = static_cast<const T*>(p.c) + z0 * K;
  const T* gw1 = static_cast<const T*>(p.w1) + static_cast<int64_t>(z0) * H * K;
  const T* gb1 = static_cast<const T*>(p.b1) + z0 * H;
  const T* gw2 = static_cast<const T*>(p.w2) + z0 * H;
  const T* gb2 = static_cast<const T*>(p.b2) + z0;
  const T* gg = static_cast<const T*>(p.gate) + b * Zall + z0;
  for (int i = threadIdx.x; i < nk; i += blockDim.x) {
    const expert::CentredAffine<T> f = expert::centred_affine(ga[i], gc[i]);
    sa[i] = f.a;
    sm_[i] = f.m;
    sr[i] = f.r;
  }
  for (int i = threadIdx.x; i < nhk; i += blockDim.x) sw1[i] = gw1[i];
  for (int i = threadIdx.x; i < nh; i += blockDim.x) {
    sb1[i] = gb1[i];
    sw2[i] = gw2[i];
  }
  for (int i = threadIdx.x; i < Z; i += blockDim.x) {
    sb2[i] = gb2[i];
    sg[i] = gg[i];
  }
  __syncthreads();
  return Staged<T>{sa, sm_, sr, sw1, sb1, sw2, sb2, sg};
}

// Butterfly sum: every lane ends with the same value, in the same order on
// every run (no atomics).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Calls fn(std::integral_constant<int, K>{}) for K in 1..kExpertMaxChannels.
template <typename Fn>
void dispatch_channels(int64_t K, Fn&& fn) {
  switch (K) {
    case 1: fn(std::integral_constant<int, 1>{}); return;
    case 2: fn(std::integral_constant<int, 2>{}); return;
    case 3: fn(std::integral_constant<int, 3>{}); return;
    case 4: fn(std::integral_constant<int, 4>{}); return;
    case 5: fn(std::integral_constant<int, 5>{}); return;
    case 6: fn(std::integral_constant<int, 6>{}); return;
    case 7: fn(std::integral_constant<int, 7>{}); return;
    case 8: fn(std::integral_constant<int, 8>{}); return;
  }
  throw InvalidArgument("x: expected 1.." + std::to_string(kExpertMaxChannels) +
                        " model channels, got " + std::to_string(K));
}

// Dynamic shared memory above the default 48 KiB must be opted into per kernel.
template <typename Kernel>
void prepare_smem(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSmem) return;
  if (bytes > cuda_detail::max_block_smem_optin())
    throw InvalidArgument("expert_fuse: experts too large for shared memory (" +
                          std::to_string(bytes) + " bytes); reduce ratio or num_experts");
  cuda_detail::allow_dynamic_smem(kernel, bytes);
}

}  // namespace expert_cuda
}  // namespace qme
