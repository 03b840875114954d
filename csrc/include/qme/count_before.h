// Argument block and entry points of count_before: for a shard of gallery
// columns, how many entries of each probe row rank before given (key, column)
// queries. Summed over the column shards of a gallery, the count is the
// query's global rank; qme_ext.distributed builds Rank-k/mAP of column-sharded
// score matrices from it (docs/definitions.rst, §2.1).
//
// Order (the package's ranking order, common.h): descending key, ties broken by
// lower *global* gallery column; an entry does not rank before itself.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qme/common.h"

#if defined(__CUDACC__) || defined(QME_COUNT_BEFORE_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace qme {

struct CountBeforeArgs {
  // inputs
  MatrixView scores;             // (P, G) the local column shard, any strides
  int64_t col_offset;            // global column of local column 0
  const int64_t* query_offsets;  // (P + 1,) CSR offsets: row p owns queries [off[p], off[p+1])
  const uint64_t* query_keys;    // (nq,) order-preserving keys, key_bits(scores.dtype) wide
  const int64_t* query_cols;     // (nq,) global columns of the queries
  int64_t max_queries;           // max over rows of the query count (CUDA sizing)
  // outputs
  int64_t* counts;               // (nq,) entries of the row ranked before each query
};

// Checks shared by both twins and the workspace query (throws InvalidArgument):
// the view, col_offset >= 0, and for 32-bit keys col_offset + G <= 2^32 (the
// column lives in the low 32 bits of the 64-bit rank code).
void check_count_before_args(const CountBeforeArgs& args);

void count_before_cpu(const CountBeforeArgs& args, int num_threads);

#if defined(__CUDACC__) || defined(QME_COUNT_BEFORE_WITH_CUDA)
size_t count_before_cuda_workspace(const CountBeforeArgs& args);
void count_before_cuda(const CountBeforeArgs& args, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream);
#endif

}  // namespace qme
