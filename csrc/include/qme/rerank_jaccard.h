// Argument block and entry points of rerank_jaccard, the hot part of k-reciprocal
// re-ranking (Zhong et al., CVPR 2017): the Jaccard overlaps of the sparse k-reciprocal
// encodings of the probes with those of the gallery, through inverted lists.
//
//   out[p, g] = sum over k in supp(V_p), ascending, of min(V_p[k], V_{gallery g}[k])
//
// V_p (row p of the query rows) is a CSR list of (column, value), columns ascending;
// the inverted list of column k holds the gallery rows g with V_g[k] != 0 (g ascending)
// and their values. Each out[p, g] is summed in ascending k, so the CPU and CUDA twins
// give the same bits. Memory is that of the sparse lists: O((P + G) * k) for encodings
// of at most k entries, never (P + G)^2.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(QME_RERANK_JACCARD_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

struct RerankJaccardArgs {
  // inputs
  int64_t num_probes;            // P: rows of out
  int64_t num_gallery;           // G: columns of out
  int64_t num_columns;           // N: columns of the encodings (P + G in re-ranking)
  const int64_t* probe_offsets;  // (P + 1,) CSR offsets of the probe encodings
  const int64_t* probe_cols;     // (nnz_p,) columns in [0, N), ascending within a row
  const double* probe_vals;      // (nnz_p,)
  const int64_t* inv_offsets;    // (N + 1,) CSR offsets of the inverted lists
  const int64_t* inv_rows;       // (nnz_g,) gallery rows in [0, G), ascending within a list
  const double* inv_vals;        // (nnz_g,)
  // outputs
  double* out;                   // (P, G) contiguous, overwritten
};

// Checks shared by both twins (throws InvalidArgument): sizes >= 0, pointers present.
// The CSR contents are validated in Python before any pointer is used.
void check_rerank_jaccard_args(const RerankJaccardArgs& args);

void rerank_jaccard_cpu(const RerankJaccardArgs& args, int num_threads);

#if defined(__CUDACC__) || defined(QME_RERANK_JACCARD_WITH_CUDA)
void rerank_jaccard_cuda(const RerankJaccardArgs& args, cudaStream_t stream);
#endif

}  // namespace qme
