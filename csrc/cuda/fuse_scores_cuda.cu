// CUDA twin of fuse_scores (fuse_scores_cpu.cpp): grid-stride over rows
// (blockIdx.y) and columns (x), consecutive threads on consecutive columns so the
// K input reads and the one output write coalesce for row-major matrices. The
// element math is fuse_detail's, shared with the CPU twin; memory bound.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "qme/fuse_scores.h"

namespace qme {
namespace {

constexpr int kThreads = 256;

template <DType D, typename O>
__global__ void __launch_bounds__(kThreads) fuse_kernel(FuseScoresArgs a) {
  const int64_t P = a.scores[0].rows, G = a.scores[0].cols;
  O* out = static_cast<O*>(a.out);
  for (int64_t i = blockIdx.y; i < P; i += gridDim.y) {
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < G;
         j += static_cast<int64_t>(gridDim.x) * kThreads) {
      out[i * G + j] = static_cast<O>(fuse_detail::fused_score<D>(a, i, j));
    }
  }
}

}  // namespace

void fuse_scores_cuda(const FuseScoresArgs& a, cudaStream_t stream) {
  check_fuse_scores_args(a);
  const int64_t P = a.scores[0].rows, G = a.scores[0].cols;
  if (P == 0 || G == 0) return;
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((G + kThreads - 1) / kThreads, 1024));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(P, 65535));
  dispatch_dtype(a.scores[0].dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    if (a.out_dtype == DType::kFloat64)
      fuse_kernel<D, double><<<dim3(gx, gy), kThreads, 0, stream>>>(a);
    else
      fuse_kernel<D, float><<<dim3(gx, gy), kThreads, 0, stream>>>(a);
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace qme
