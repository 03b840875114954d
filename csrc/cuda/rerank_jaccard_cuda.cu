// CUDA twin of rerank_jaccard (rerank_jaccard_cpu.cpp): one block per probe row
// (grid-stride over rows). The block zeroes its output row, then walks the probe's
// encoding columns in ascending order; within one column the threads split the
// inverted list, whose gallery rows are distinct, so no two threads add to the same
// element and no atomics are needed. A barrier between columns keeps every element's
// additions in ascending column order: the CPU's order, hence the CPU's bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_check.cuh"
#include "qme/common.h"
#include "qme/rerank_jaccard.h"

namespace qme {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) jaccard_kernel(RerankJaccardArgs a) {
  const int64_t G = a.num_gallery;
  for (int64_t p = blockIdx.x; p < a.num_probes; p += gridDim.x) {
    double* row = a.out + p * G;
    for (int64_t g = threadIdx.x; g < G; g += kThreads) row[g] = 0.0;
    __syncthreads();
    for (int64_t t = a.probe_offsets[p]; t < a.probe_offsets[p + 1]; ++t) {
      const int64_t k = a.probe_cols[t];
      const double v = a.probe_vals[t];
      for (int64_t u = a.inv_offsets[k] + threadIdx.x; u < a.inv_offsets[k + 1]; u += kThreads) {
        const int64_t g = a.inv_rows[u];
        row[g] = __dadd_rn(row[g], fmin(v, a.inv_vals[u]));
      }
      __syncthreads();  // the next column adds to the same elements
    }
  }
}

}  // namespace

void rerank_jaccard_cuda(const RerankJaccardArgs& a, cudaStream_t stream) {
  check_rerank_jaccard_args(a);
  if (a.num_probes == 0 || a.num_gallery == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(a.num_probes, 65535));
  jaccard_kernel<<<grid, kThreads, 0, stream>>>(a);
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace qme
