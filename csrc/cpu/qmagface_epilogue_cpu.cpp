// CPU twin of qmagface_epilogue: the element-wise QMagFace score adjustment of
// one similarity tile (docs/definitions.rst, §5). It runs right after the tile's matmul so the
// tile is still cache resident; rows are split between threads.
#include <algorithm>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"
#include "qme/quality_ops.h"

namespace qme {
namespace {

template <DType DI, DType DO>
void epilogue_rows(const QMagFaceEpilogueArgs& a, int64_t r0, int64_t r1) {
  using SI = typename ScoreTraits<DI>::Storage;
  using SO = typename StoreTraits<DO>::Storage;
  const SI* in = static_cast<const SI*>(a.cos.data);
  SO* out = static_cast<SO*>(a.out.data);
  const int64_t G = a.cos.cols;
  if constexpr (DI == DType::kFloat32 && DO == DType::kFloat32) {
    // float32 in and out: float arithmetic in every layout (the contiguous matmul
    // tile vectorises), on both twins (qmagface_epilogue_cuda.cu computes the same
    // epilogue_f32 with _rn intrinsics). Float rounding (~1e-7 relative) is at the
    // storage precision of the float32 output.
    const float alpha = static_cast<float>(a.alpha), beta = static_cast<float>(a.beta);
    std::vector<float> qg(static_cast<size_t>(G));
    for (int64_t j = 0; j < G; ++j) qg[j] = static_cast<float>(a.q_gallery[j]);
    for (int64_t i = r0; i < r1; ++i) {
      const float qp = static_cast<float>(a.q_probe[i]);
      const float* irow = in + i * a.cos.stride_row;
      float* orow = out + i * a.out.stride_row;
      if (a.cos.stride_col == 1 && a.out.stride_col == 1) {
        for (int64_t j = 0; j < G; ++j) orow[j] = epilogue_f32(irow[j], qp, qg[j], alpha, beta);
      } else {
        for (int64_t j = 0; j < G; ++j)
          orow[j * a.out.stride_col] =
              epilogue_f32(irow[j * a.cos.stride_col], qp, qg[j], alpha, beta);
      }
    }
    return;
  }
  for (int64_t i = r0; i < r1; ++i) {
    const double qp = a.q_probe[i];
    const SI* irow = in + i * a.cos.stride_row;
    SO* orow = out + i * a.out.stride_row;
    for (int64_t j = 0; j < G; ++j) {
      const double s = ScoreTraits<DI>::value(irow[j * a.cos.stride_col]);
      orow[j * a.out.stride_col] =
          StoreTraits<DO>::encode(epilogue_f64(s, qp, a.q_gallery[j], a.alpha, a.beta));
    }
  }
}

}  // namespace

void check_qmagface_epilogue(const QMagFaceEpilogueArgs& a) {
  check_matrix(a.cos, "cos");
  MatrixView o{a.out.data, a.out.dtype, a.out.rows, a.out.cols, a.out.stride_row, a.out.stride_col};
  check_matrix(o, "out");
  if (a.out.rows != a.cos.rows || a.out.cols != a.cos.cols)
    throw InvalidArgument("qmagface_epilogue: out must have the shape of cos");
  if (a.cos.rows * a.cos.cols > 0 && (!a.q_probe || !a.q_gallery))
    throw InvalidArgument("qmagface_epilogue: missing norms");
}

void qmagface_epilogue_cpu(const QMagFaceEpilogueArgs& a, int num_threads) {
  check_qmagface_epilogue(a);
  if (a.cos.rows == 0 || a.cos.cols == 0) return;
  dispatch_dtype(a.cos.dtype, [&](auto ti) {
    dispatch_dtype(a.out.dtype, [&](auto to) {
      constexpr DType DI = decltype(ti)::value;
      constexpr DType DO = decltype(to)::value;
      // ~16k elements per thread at least: below that thread start-up dominates.
      const int64_t min_rows = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.cos.cols));
      parallel_for_blocks(a.cos.rows, num_threads, min_rows,
                          [&](int, int64_t b, int64_t e) { epilogue_rows<DI, DO>(a, b, e); });
    });
  });
}

}  // namespace qme
