// Argument block and entry points of topk: the k best gallery entries of every
// probe row of a (P, G) score matrix, in the package's exact order.
//
// Order (the same total order on keys as every metric, common.h):
//   largest = true : descending score;  largest = false : ascending score;
//   in both directions NaN is "no score" and ranks after every real score;
//   -0.0 ties +0.0; ties (and NaNs among themselves) go to the lower gallery index.
// Each row of the output is sorted best first. values[p, j] is the stored score
// scores[p, indices[p, j]] copied bit for bit (a -0.0 stays -0.0, a NaN keeps its
// payload), in the input dtype.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qme/common.h"

#if defined(__CUDACC__) || defined(QME_TOPK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

// Largest k accepted by both twins: the CUDA twin sorts a row's k winners in
// shared memory, and retrieval never needs more.
constexpr int64_t kTopkMaxK = 2048;

struct TopkArgs {
  // inputs
  MatrixView scores;   // (P, G) any strides
  int64_t k;           // 1 <= k <= min(G, kTopkMaxK)
  bool largest;        // true: highest scores first
  // outputs (contiguous, allocated by the caller)
  void* values;        // (P, k) dtype of scores
  int64_t* indices;    // (P, k) gallery columns
};

// Selection key of one score: higher = better in the requested direction, NaN
// lowest (0) in both. Built on the order-preserving keys of common.h, so the
// order is exact and -0.0 == +0.0.
template <typename K>
QME_HD K topk_select_key(K key, bool largest) {
  return (largest || key == K(0)) ? key : static_cast<K>(~key);
}

// Checks of the scores view and k shared by both twins and the workspace query
// (throws InvalidArgument naming the argument).
void check_topk_args(const TopkArgs& args);

void topk_cpu(const TopkArgs& args, int num_threads);

#if defined(__CUDACC__) || defined(QME_TOPK_WITH_CUDA)
// CUDA twin: device pointers, caller-provided workspace, enqueued on `stream`.
size_t topk_cuda_workspace(const TopkArgs& args);
void topk_cuda(const TopkArgs& args, void* workspace, size_t workspace_bytes, cudaStream_t stream);
#endif

}  // namespace qme
