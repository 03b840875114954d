// CUDA twin of expert_fuse_bwd (expert_fuse_bwd_cpu.cpp).
//
// Pass 1 (one block per (row b, column tile)): recompute each entry's hidden
// activations and dropout mask, write grad_x directly (each entry is owned by one
// thread), and sum the parameter and gate gradients of the block. Per hidden unit
// the per-thread contributions are warp-summed (butterfly shuffles) and lane 0 adds
// them into its warp's own shared-memory slot, so no two threads ever add to the
// same address. At the end the warp slots are added in warp order and the block's
// partials go to the workspace, laid out value-major ((values, items)) so pass 2
// reads them coalesced.
// Pass 2: one block per parameter value sums the items in a fixed strided order
// and a fixed tree; one thread per (b, z) sums its row's tiles in order for the
// gate. No float atomics anywhere: the results are bitwise reproducible.
//
// Precision: as on the CPU (which sums each chunk of entries in the compute type
// and everything above in double), a thread's few entries are summed in the
// compute type T and every sum above that (warp sums, warp slots, block partials,
// both reductions) in double, for every input dtype; the results are rounded to T
// once at the end. Large experts: when the staged parameters plus the 8 per-warp
// slot copies of all Z experts exceed the block's shared memory, pass 1 runs in
// launches over consecutive expert ranges [z0, z0 + zn) (each stages and sums only
// its experts; grad_x is carried from one launch to the next in T, so its bits are
// those of a single launch); only a single expert too large for shared memory is
// refused.
#include <cuda_runtime.h>

#include "expert_fuse_common.cuh"

namespace qme {
namespace {

using namespace expert_cuda;

// Values per block partial: Z experts x (a K, c K, w1 H*K, b1 H, w2 H, b2 1), then the Z gates.
inline int64_t partial_values(int64_t Z, int64_t K, int64_t H) {
  return Z * expert::param_grads_per_expert(K, H) + Z;
}

// Dynamic shared memory of pass 1 for zn experts: their staged parameters (T), then
// (kWarps, partial_values(zn)) double slots, 8-byte aligned.
inline size_t bwd_smem(int64_t zn, int64_t K, int64_t H, size_t t_size) {
  const size_t params = (static_cast<size_t>(param_elems(zn, K, H)) * t_size + 7) / 8 * 8;
  return params + static_cast<size_t>(kWarps * partial_values(zn, K, H)) * sizeof(double);
}

template <DType D, typename T, int KC>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(ScoreCubeView xv,     // (B, K, G) strided scores
               ExpertParams p,       // parameters, compute type T
               const T* grad_fused,  // (B, G)
               uint32_t threshold, T keep_scale, int64_t tiles, int64_t items,
               int z0, int zn,       // this launch's experts [z0, z0 + zn)
               T* grad_x,            // (B, K, G) contiguous; read back when z0 > 0
               double* partials) {   // (partial_values(Z), items) workspace
  using S = typename ScoreTraits<D>::Storage;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t item = blockIdx.x;
  const int64_t b = item / tiles, tile = item - b * tiles;
  const int Z = p.num_experts, H = p.hidden;
  const int64_t G = xv.cols;
  const int per = static_cast<int>(expert::param_grads_per_expert(KC, H));
  const int nvals = zn * per + zn;  // this launch's values: zn experts, then zn gates
  T* sm = reinterpret_cast<T*>(smem_raw);
  double* slots = reinterpret_cast<double*>(
      smem_raw + (static_cast<size_t>(param_elems(zn, KC, H)) * sizeof(T) + 7) / 8 * 8);
  for (int i = threadIdx.x; i < kWarps * nvals; i += kThreads) slots[i] = 0.0;
  const Staged<T> P = stage_params<T>(p, KC, H, b, sm, z0, zn);  // synchronises
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double* my_slot = slots + warp * nvals;
  const S* xb = static_cast<const S*>(xv.data) + b * xv.stride_batch;

  constexpr int kPerThread = per_thread<KC>();
  constexpr int64_t kSubTile = int64_t{kThreads} * kPerThread;
  for (int sub = 0; sub < kEntriesPerThread / kPerThread; ++sub) {
    const int64_t g0 = tile * kTile + sub * kSubTile + threadIdx.x;
    if (tile * kTile + sub * kSubTile >= G) break;  // uniform across the block
    T x[kPerThread][KC], gx[kPerThread][KC], go[kPerThread];
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t g = g0 + int64_t{e} * kThreads;
      const bool ok = g < G;
      // Out-of-range lanes get grad 0, so every contribution of theirs is exactly 0.
      go[e] = ok ? grad_fused[b * G + g] : T(0);
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        x[e][k] = ok ? expert::load<D, T>(xb[k * xv.stride_channel + g * xv.stride_col]) : T(0);
        gx[e][k] = (ok && z0 > 0) ? grad_x[(b * KC + k) * G + g] : T(0);
      }
    }
    for (int zl = 0; zl < zn; ++zl) {
      const int z = z0 + zl;  // global expert (dropout); zl indexes the staged views
      double* zs = my_slot + zl * per;  // this expert's slot: a, c, w1, b1, w2, b2
      T y[kPerThread][KC], dy[kPerThread][KC], ez[kPerThread], dE[kPerThread];
      const T gz = P.gate[zl];
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          y[e][k] = P.a[zl * KC + k] * (x[e][k] - P.m[zl * KC + k]) + P.r[zl * KC + k];
          dy[e][k] = T(0);
        }
        ez[e] = P.b2[zl];
        dE[e] = go[e] * gz;
      }
      for (int h = 0; h < H; ++h) {
        const T* w = P.w1 + (zl * H + h) * KC;
        const T bias = P.b1[zl * H + h], w2 = P.w2[zl * H + h];
        T s_w2 = T(0), s_b1 = T(0), s_w1[KC];
#pragma unroll
        for (int k = 0; k < KC; ++k) s_w1[k] = T(0);
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
          T pre = bias;
#pragma unroll
          for (int k = 0; k < KC; ++k) pre += w[k] * y[e][k];
          T dsel;
          const T s = expert::selu(pre, &dsel);
          const T m = threshold ? expert::dropout_keep<T>(p.seed, threshold, keep_scale, z, h,
                                                          H, b, g0 + int64_t{e} * kThreads, G)
                                : T(1);
          const T act = s * m;
          ez[e] += w2 * act;
          s_w2 += dE[e] * act;
          const T dpre = dE[e] * w2 * m * dsel;
          s_b1 += dpre;
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            s_w1[k] += dpre * y[e][k];
            dy[e][k] += dpre * w[k];
          }
        }
        // the thread's entries were summed in T; from the warp sum on, double
        const double d_w2 = warp_sum(static_cast<double>(s_w2));
        const double d_b1 = warp_sum(static_cast<double>(s_b1));
        double d_w1[KC];
#pragma unroll
        for (int k = 0; k < KC; ++k) d_w1[k] = warp_sum(static_cast<double>(s_w1[k]));
        if (lane == 0) {
#pragma unroll
          for (int k = 0; k < KC; ++k) zs[2 * KC + h * KC + k] += d_w1[k];
          zs[2 * KC + H * KC + h] += d_b1;
          zs[2 * KC + H * KC + H + h] += d_w2;
        }
      }
      T s_gate = T(0), s_b2 = T(0), s_a[KC], s_c[KC];
#pragma unroll
      for (int k = 0; k < KC; ++k) s_a[k] = s_c[k] = T(0);
#pragma unroll
      for (int e = 0; e < kPerThread; ++e) {
        s_gate += go[e] * ez[e];
        s_b2 += dE[e];
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          s_a[k] += dy[e][k] * (x[e][k] - P.m[zl * KC + k]);  // centred, as on the CPU
          s_c[k] += dy[e][k];
          gx[e][k] += dy[e][k] * P.a[zl * KC + k];
        }
      }
      const double d_gate = warp_sum(static_cast<double>(s_gate));
      const double d_b2 = warp_sum(static_cast<double>(s_b2));
      double d_a[KC], d_c[KC];
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        d_a[k] = warp_sum(static_cast<double>(s_a[k]));
        d_c[k] = warp_sum(static_cast<double>(s_c[k]));
      }
      if (lane == 0) {
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          zs[k] += d_a[k];
          zs[KC + k] += d_c[k];
        }
        zs[2 * KC + H * KC + 2 * H] += d_b2;
        my_slot[zn * per + zl] += d_gate;
      }
    }
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      const int64_t g = g0 + int64_t{e} * kThreads;
      if (g < G) {
#pragma unroll
        for (int k = 0; k < KC; ++k) grad_x[(b * KC + k) * G + g] = gx[e][k];
      }
    }
  }
  __syncthreads();
  // warp slots in warp order; local value v -> global value (experts, then gates)
  for (int v = threadIdx.x; v < nvals; v += kThreads) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) s += slots[w * nvals + v];
    const int64_t gv = v < zn * per ? int64_t{z0} * per + v : int64_t{Z} * per + z0 + (v - zn * per);
    partials[gv * items + item] = s;
  }
}

// Sum over all items of one row of partials, fixed order (strided, then a fixed tree);
// the result is returned to thread 0.
__device__ double sum_items(const double* row, int64_t items, double* warp_part) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < items; i += kThreads) s += row[i];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = s;
  __syncthreads();
  double dt = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) dt += warp_part[w];
  __syncthreads();  // warp_part is reused by the next call
  return dt;
}

// One block per parameter value: sum over all items, fixed order. grad_a's blocks also
// sum their channel's grad_c row: dL/da = sum dy * (x - m) + m * sum dy (centred_affine).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    reduce_params_kernel(const double* partials,  // (partial_values, items)
                         int64_t items, int K, int H,
                         const T* a, const T* c,  // (Z, K) each: the folded affine
                         T* ga, T* gc,       // (Z, K) each
                         T* gw1,             // (Z, H, K)
                         T* gb1, T* gw2,     // (Z, H) each
                         T* gb2) {           // (Z,)
  __shared__ double warp_part[kWarps];
  const int v = blockIdx.x;
  const int per = static_cast<int>(expert::param_grads_per_expert(K, H));
  const int z = v / per, o = v - z * per;
  double dt = sum_items(partials + static_cast<int64_t>(v) * items, items, warp_part);
  if (o < K) {  // uniform per block
    const double dc = sum_items(partials + static_cast<int64_t>(v + K) * items, items, warp_part);
    dt += static_cast<double>(expert::centred_affine(a[z * K + o], c[z * K + o]).m) * dc;
  }
  if (threadIdx.x != 0) return;
  const T t = static_cast<T>(dt);
  if (o < K) ga[z * K + o] = t;
  else if (o < 2 * K) gc[z * K + o - K] = t;
  else if (o < 2 * K + H * K) gw1[z * H * K + o - 2 * K] = t;
  else if (o < 2 * K + H * K + H) gb1[z * H + o - 2 * K - H * K] = t;
  else if (o < 2 * K + H * K + 2 * H) gw2[z * H + o - 2 * K - H * K - H] = t;
  else gb2[z] = t;
}

// One thread per (b, z): the row's column tiles in order.
template <typename T>
__global__ void reduce_gate_kernel(const double* gate_partials,  // (Z, items), items = B * tiles
                                   int64_t B, int Z, int64_t tiles, int64_t items,
                                   T* grad_gate) {           // (B, Z)
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * Z) return;
  const int64_t b = i / Z, z = i - b * Z;
  const double* src = gate_partials + z * items + b * tiles;
  double s = 0.0;
  for (int64_t t = 0; t < tiles; ++t) s += src[t];
  grad_gate[i] = static_cast<T>(s);
}

size_t elem_size(DType d) { return d == DType::kFloat64 ? 8 : 4; }

}  // namespace

size_t expert_fuse_bwd_cuda_workspace(const ExpertFuseBwdArgs& a) {
  const Grid grid = make_grid(a.x.batch, a.x.cols);
  const int64_t vals = partial_values(a.params.num_experts, a.x.channels, a.params.hidden);
  return static_cast<size_t>(vals * grid.items) * sizeof(double);  // double partials
}

void expert_fuse_bwd_cuda(const ExpertFuseBwdArgs& a, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  check_expert_args(a.x, a.params);
  if (a.grad_a == nullptr || a.grad_c == nullptr || a.grad_w1 == nullptr ||
      a.grad_b1 == nullptr || a.grad_w2 == nullptr || a.grad_b2 == nullptr)
    throw InvalidArgument("expert_fuse_bwd: null parameter-gradient pointer");
  const int64_t B = a.x.batch, G = a.x.cols, K = a.x.channels;
  const int Z = a.params.num_experts, H = a.params.hidden;
  const size_t es = elem_size(a.x.dtype);
  if (B * G == 0) {
    // Nothing to sum: every gradient is zero.
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_a, 0, Z * K * es, stream));
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_c, 0, Z * K * es, stream));
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_w1, 0, Z * H * K * es, stream));
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_b1, 0, Z * H * es, stream));
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_w2, 0, Z * H * es, stream));
    QME_CUDA_CHECK(cudaMemsetAsync(a.grad_b2, 0, Z * es, stream));
    if (B > 0 && a.grad_gate) QME_CUDA_CHECK(cudaMemsetAsync(a.grad_gate, 0, B * Z * es, stream));
    return;
  }
  if (a.grad_fused == nullptr || a.grad_x == nullptr || a.grad_gate == nullptr)
    throw InvalidArgument("expert_fuse_bwd: null pointer for a non-empty problem");
  const size_t need = expert_fuse_bwd_cuda_workspace(a);
  if (workspace == nullptr || workspace_bytes < need)
    throw InvalidArgument("expert_fuse_bwd: workspace too small (" +
                          std::to_string(workspace_bytes) + " < " + std::to_string(need) + ")");
  const Grid grid = make_grid(B, G);
  if (grid.items > 0x7FFFFFFF)
    throw InvalidArgument("expert_fuse_bwd: problem too large for one launch");
  const uint32_t threshold = expert::dropout_threshold(a.params.dropout);
  const int64_t nvals = partial_values(Z, K, H);
  const int64_t nparams = nvals - Z;
  // Experts per launch of pass 1: all of them if they fit in shared memory.
  const size_t smem_max = cuda_detail::max_block_smem_optin();
  const size_t es_t = a.x.dtype == DType::kFloat64 ? 8 : 4;
  int zc = Z;
  while (zc > 1 && bwd_smem(zc, K, H, es_t) > smem_max) zc = (zc + 1) / 2;
  if (bwd_smem(zc, K, H, es_t) > smem_max)
    throw InvalidArgument("expert_fuse: one expert too large for shared memory (" +
                          std::to_string(bwd_smem(1, K, H, es_t)) + " bytes); reduce ratio");
  dispatch_dtype(a.x.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = ComputeT<D>;
    double* partials = static_cast<double*>(workspace);
    dispatch_channels(K, [&](auto kc) {
      constexpr int KC = decltype(kc)::value;
      auto kernel = bwd_kernel<D, T, KC>;
      prepare_smem(kernel, bwd_smem(zc, KC, H, sizeof(T)));
      for (int z0 = 0; z0 < Z; z0 += zc) {  // in expert order: grad_x carries over
        const int zn = std::min(zc, Z - z0);
        kernel<<<static_cast<unsigned>(grid.items), kThreads, bwd_smem(zn, KC, H, sizeof(T)),
                 stream>>>(a.x, a.params, static_cast<const T*>(a.grad_fused), threshold,
                           static_cast<T>(1.0 / (1.0 - a.params.dropout)), grid.tiles,
                           grid.items, z0, zn, static_cast<T*>(a.grad_x), partials);
        QME_CUDA_CHECK_LAUNCH();
      }
    });
    reduce_params_kernel<T><<<static_cast<unsigned>(nparams), kThreads, 0, stream>>>(
        partials, grid.items, static_cast<int>(K), H, static_cast<const T*>(a.params.a),
        static_cast<const T*>(a.params.c), static_cast<T*>(a.grad_a),
        static_cast<T*>(a.grad_c), static_cast<T*>(a.grad_w1), static_cast<T*>(a.grad_b1),
        static_cast<T*>(a.grad_w2), static_cast<T*>(a.grad_b2));
    QME_CUDA_CHECK_LAUNCH();
    const int64_t ng = B * Z;
    reduce_gate_kernel<T><<<static_cast<unsigned>((ng + kThreads - 1) / kThreads), kThreads, 0,
                            stream>>>(partials + nparams * grid.items, B, Z, grid.tiles,
                                      grid.items, static_cast<T*>(a.grad_gate));
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace qme
