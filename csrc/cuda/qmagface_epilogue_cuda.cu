// CUDA twin of qmagface_epilogue (qmagface_epilogue_cpu.cpp): launched on the
// tile that the preceding matmul just wrote, while it is still L2 resident
// (a 1024 x 8192 fp32 tile is 32 MiB, inside an H100's 50 MiB L2). Grid-stride
// over rows (blockIdx.y) and columns (x); consecutive threads take consecutive
// columns so loads and stores coalesce for row-major tiles.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "qme/quality_ops.h"

namespace qme {
namespace {

constexpr int kThreads = 256;

template <DType DI, DType DO>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(QMagFaceEpilogueArgs a) {
  using SI = typename ScoreTraits<DI>::Storage;
  using SO = typename StoreTraits<DO>::Storage;
  // Computed in double for every output dtype and rounded once on the store, like
  // the CPU twin's general path. The _rn intrinsics keep nvcc from fusing the
  // multiply-adds into FMAs, whose single rounding would differ from the CPU's two
  // (a float64 output must be CPU-identical). The kernel is memory bound: the
  // double arithmetic is free.
  const SI* in = static_cast<const SI*>(a.cos.data);
  SO* out = static_cast<SO*>(a.out.data);
  const int64_t P = a.cos.rows, G = a.cos.cols;
  const double alpha = a.alpha, beta = a.beta;
  for (int64_t i = blockIdx.y; i < P; i += gridDim.y) {
    const double qp = a.q_probe[i];
    const SI* irow = in + i * a.cos.stride_row;
    SO* orow = out + i * a.out.stride_row;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < G;
         j += static_cast<int64_t>(gridDim.x) * kThreads) {
      const double s = static_cast<double>(ScoreTraits<DI>::value(irow[j * a.cos.stride_col]));
      const double qg = a.q_gallery[j];
      // the CPU's std::min(qp, qg) and std::min(0.0, w), choice for choice (NaN, -0.0)
      const double q = qg < qp ? qg : qp;
      const double w = __dsub_rn(__dmul_rn(beta, s), alpha);
      const double omega = w < 0.0 ? w : 0.0;
      orow[j * a.out.stride_col] = StoreTraits<DO>::encode(__dadd_rn(__dmul_rn(omega, q), s));
    }
  }
}

}  // namespace

void qmagface_epilogue_cuda(const QMagFaceEpilogueArgs& a, cudaStream_t stream) {
  check_qmagface_epilogue(a);
  const int64_t P = a.cos.rows, G = a.cos.cols;
  if (P == 0 || G == 0) return;
  const unsigned gx = static_cast<unsigned>(std::min<int64_t>((G + kThreads - 1) / kThreads, 1024));
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>(P, 65535));
  dispatch_dtype(a.cos.dtype, [&](auto ti) {
    dispatch_dtype(a.out.dtype, [&](auto to) {
      constexpr DType DI = decltype(ti)::value;
      constexpr DType DO = decltype(to)::value;
      epilogue_kernel<DI, DO><<<dim3(gx, gy), kThreads, 0, stream>>>(a);
      QME_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace qme
