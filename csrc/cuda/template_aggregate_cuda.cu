// CUDA twin of template_aggregate (template_aggregate_cpu.cpp): one block per
// template, threads over the feature dimension so each row of a segment is read
// with coalesced loads. Bitwise equal to the CPU: float64 accumulation for every
// weight dtype, every multiply/add/divide rounded on its own (__dmul_rn/__dadd_rn,
// no FMA contraction), each column summed over the segment in row order like the
// CPU, and |u_t|^2 summed by one thread in column order (the CPU's loop; Dm is a
// feature dimension, small next to the segment read). The column means are staged
// in dynamic shared memory (double) for the norm and the scaling; a Dm beyond the
// shared-memory budget recomputes them (the same sums, so the same bits). Every
// thread walks the whole segment, so each also has W_t without a reduction.
// Offsets are trusted (validated in Python).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "qme/quality_ops.h"

namespace qme {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxStagedCols = 16384;  // 128 KB of doubles, inside the 227 KB opt-in

// Column d's weighted sum over rows [b, e) and the weight total, in the CPU's order.
template <DType D, typename W>
__device__ double column_sum(const TemplateAggregateArgs& a, int64_t b, int64_t e, int64_t d,
                             double& W_t) {
  using S = typename ScoreTraits<D>::Storage;
  const S* f = static_cast<const S*>(a.features.data);
  const W* w = static_cast<const W*>(a.weights);
  double acc = 0.0;
  W_t = 0.0;
  for (int64_t i = b; i < e; ++i) {
    const double wi = static_cast<double>(w[i]);
    if (wi == 0.0) continue;  // the CPU skips the row
    W_t = __dadd_rn(W_t, wi);
    acc = __dadd_rn(acc, __dmul_rn(wi, static_cast<double>(ScoreTraits<D>::value(
                                           f[i * a.features.stride_row + d * a.features.stride_col]))));
  }
  return acc;
}

template <DType D, typename W>
__device__ double column_mean(const TemplateAggregateArgs& a, int64_t b, int64_t e, int64_t d,
                              double W_t) {
  double unused;
  return column_sum<D, W>(a, b, e, d, unused) / W_t;
}

template <DType D, typename W, bool kStaged>
__global__ void __launch_bounds__(kThreads) aggregate_kernel(TemplateAggregateArgs a) {
  extern __shared__ double s_u[];  // (Dm,) column means when kStaged
  __shared__ double s_wt, s_n;
  const W* w = static_cast<const W*>(a.weights);
  W* out = static_cast<W*>(a.templates);
  const int64_t Dm = a.features.cols;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < a.num_templates; t += gridDim.x) {
    const int64_t b = a.offsets[t], e = a.offsets[t + 1];
    W* o = out + t * Dm;
    if (tid == 0) {
      double W_t = 0.0;
      for (int64_t i = b; i < e; ++i) {
        const double wi = static_cast<double>(w[i]);
        if (wi != 0.0) W_t = __dadd_rn(W_t, wi);
      }
      s_wt = W_t;
    }
    __syncthreads();
    const double W_t = s_wt;
    if (W_t == 0.0) {  // the CPU's empty template: zeros, weight 0, norm 0
      for (int64_t d = tid; d < Dm; d += kThreads) o[d] = W(0);
      if (tid == 0) {
        static_cast<W*>(a.weight_sum)[t] = W(0);
        static_cast<W*>(a.norm)[t] = W(0);
      }
      __syncthreads();  // s_wt is reused by the next template
      continue;
    }
    if constexpr (kStaged) {
      for (int64_t d = tid; d < Dm; d += kThreads) {
        double unused;
        s_u[d] = column_sum<D, W>(a, b, e, d, unused) / W_t;
      }
      __syncthreads();
    }
    if (tid == 0) {
      double sq = 0.0;
      for (int64_t d = 0; d < Dm; ++d) {
        const double u = kStaged ? s_u[d] : column_mean<D, W>(a, b, e, d, W_t);
        sq = __dadd_rn(sq, __dmul_rn(u, u));
      }
      s_n = sqrt(sq);
    }
    __syncthreads();
    const double n = s_n;
    const double scale = (a.normalize && n > 0.0) ? 1.0 / n : 1.0;
    for (int64_t d = tid; d < Dm; d += kThreads) {
      const double u = kStaged ? s_u[d] : column_mean<D, W>(a, b, e, d, W_t);
      o[d] = static_cast<W>(__dmul_rn(u, scale));
    }
    if (tid == 0) {
      static_cast<W*>(a.weight_sum)[t] = static_cast<W>(W_t);
      static_cast<W*>(a.norm)[t] = static_cast<W>(n);
    }
    __syncthreads();  // s_u, s_wt and s_n are reused by the next template
  }
}

template <DType D, typename W>
void launch(const TemplateAggregateArgs& a, unsigned grid, cudaStream_t stream) {
  const int64_t Dm = a.features.cols;
  const size_t smem = static_cast<size_t>(std::max<int64_t>(Dm, 1)) * sizeof(double);
  if (Dm <= kMaxStagedCols && smem <= cuda_detail::max_block_smem_optin()) {
    cuda_detail::allow_dynamic_smem(aggregate_kernel<D, W, true>, smem);
    aggregate_kernel<D, W, true><<<grid, kThreads, smem, stream>>>(a);
  } else {
    aggregate_kernel<D, W, false><<<grid, kThreads, 0, stream>>>(a);
  }
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace

void template_aggregate_cuda(const TemplateAggregateArgs& a, cudaStream_t stream) {
  check_template_aggregate(a);
  if (a.num_templates == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(a.num_templates, 65535));
  dispatch_dtype(a.features.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    if (a.weights_f64) launch<D, double>(a, grid, stream);
    else launch<D, float>(a, grid, stream);
  });
}

}  // namespace qme
