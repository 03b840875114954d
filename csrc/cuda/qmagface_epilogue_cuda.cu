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
  // The CPU twin's rule (epilogue_f32 for float32 -> float32, epilogue_f64 rounded
  // once on the store otherwise; qme/quality_ops.h), so the twins agree bit for bit,
  // NaN qualities included. The kernel is memory bound: the arithmetic is free.
  const SI* in = static_cast<const SI*>(a.cos.data);
  SO* out = static_cast<SO*>(a.out.data);
  const int64_t P = a.cos.rows, G = a.cos.cols;
  for (int64_t i = blockIdx.y; i < P; i += gridDim.y) {
    const SI* irow = in + i * a.cos.stride_row;
    SO* orow = out + i * a.out.stride_row;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < G;
         j += static_cast<int64_t>(gridDim.x) * kThreads) {
      if constexpr (DI == DType::kFloat32 && DO == DType::kFloat32) {
        orow[j * a.out.stride_col] =
            epilogue_f32(irow[j * a.cos.stride_col], static_cast<float>(a.q_probe[i]),
                         static_cast<float>(a.q_gallery[j]), static_cast<float>(a.alpha),
                         static_cast<float>(a.beta));
      } else {
        const double s = static_cast<double>(ScoreTraits<DI>::value(irow[j * a.cos.stride_col]));
        orow[j * a.out.stride_col] = StoreTraits<DO>::encode(
            epilogue_f64(s, a.q_probe[i], a.q_gallery[j], a.alpha, a.beta));
      }
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
