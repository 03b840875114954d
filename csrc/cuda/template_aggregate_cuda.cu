// CUDA twin of template_aggregate (template_aggregate_cpu.cpp): one block per
// template, threads over the feature dimension so each row of a segment is read
// with coalesced loads. Every thread walks the whole segment, so each also has
// W_t without a reduction; only |u_t|^2 needs a block reduction (fixed order,
// so results are deterministic). Offsets are trusted (validated in Python).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "qme/quality_ops.h"

namespace qme {
namespace {

constexpr int kThreads = 256;

template <DType D, typename W>
__global__ void __launch_bounds__(kThreads) aggregate_kernel(TemplateAggregateArgs a) {
  using S = typename ScoreTraits<D>::Storage;
  using Acc = W;  // float32 weights -> float accumulation, float64 -> double
  __shared__ Acc s_red[kThreads];
  const S* f = static_cast<const S*>(a.features.data);
  const W* w = static_cast<const W*>(a.weights);
  W* out = static_cast<W*>(a.templates);
  const int64_t Dm = a.features.cols;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t t = blockIdx.x; t < a.num_templates; t += gridDim.x) {
    const int64_t b = a.offsets[t], e = a.offsets[t + 1];
    W* o = out + t * Dm;
    Acc W_t = 0, sq = 0;
    for (int64_t d = tid; d < Dm; d += kThreads) {
      Acc acc = 0;
      W_t = 0;
      for (int64_t i = b; i < e; ++i) {
        const Acc wi = static_cast<Acc>(w[i]);
        if (wi == Acc(0)) continue;
        W_t += wi;
        acc += wi * static_cast<Acc>(ScoreTraits<D>::value(f[i * a.features.stride_row +
                                                             d * a.features.stride_col]));
      }
      const Acc u = W_t != Acc(0) ? acc / W_t : Acc(0);
      o[d] = static_cast<W>(u);
      sq += u * u;
    }
    if (tid >= Dm) {  // threads without a column still need W_t for thread 0
      W_t = 0;
      for (int64_t i = b; i < e; ++i) W_t += static_cast<Acc>(w[i]);
    }
    s_red[tid] = sq;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (tid < s) s_red[tid] += s_red[tid + s];
      __syncthreads();
    }
    const Acc n = sqrt(s_red[0]);
    __syncthreads();  // s_red is reused by the next template
    if (a.normalize && n > Acc(0)) {
      const Acc inv = Acc(1) / n;
      for (int64_t d = tid; d < Dm; d += kThreads) o[d] = static_cast<W>(o[d] * inv);
    }
    if (tid == 0) {
      static_cast<W*>(a.weight_sum)[t] = static_cast<W>(W_t);
      static_cast<W*>(a.norm)[t] = static_cast<W>(W_t != Acc(0) ? n : Acc(0));
    }
  }
}

}  // namespace

void template_aggregate_cuda(const TemplateAggregateArgs& a, cudaStream_t stream) {
  check_template_aggregate(a);
  if (a.num_templates == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(a.num_templates, 65535));
  dispatch_dtype(a.features.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    if (a.weights_f64) aggregate_kernel<D, double><<<grid, kThreads, 0, stream>>>(a);
    else aggregate_kernel<D, float><<<grid, kThreads, 0, stream>>>(a);
    QME_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace qme
