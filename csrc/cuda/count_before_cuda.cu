// CUDA twin of count_before (count_before_cpu.cpp): one thread block per probe
// row. The row's queries are loaded and bitonic-sorted into rank order with
// their original index, the row is streamed once (rank_order::bin_row, global
// columns col_offset + j), and one thread turns the bins into prefix counts.
// Integer results: identical to the CPU twin.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/count_before.h"
#include "rank_order.cuh"

namespace qme {
namespace {

constexpr int kThreads = 256;  // multiple of 32 (rank_order::bin_row)

using rank_order::align_up;

// Per-block scratch for one row: rank-sorted query keys, global columns and
// original indices (padded to a power of two for the sort) and the bins.
struct Layout {
  int64_t cap, cap2;
  size_t bins_off, cols_off, index_off, keys_off;
  size_t bytes;
};

Layout make_layout(const CountBeforeArgs& a) {
  Layout l{};
  l.cap = std::max<int64_t>(1, a.max_queries);
  l.cap2 = rank_order::pow2_ceil(l.cap);
  const size_t slots = static_cast<size_t>(l.cap + 1), cap2 = static_cast<size_t>(l.cap2);
  const size_t kb = static_cast<size_t>(key_bits(a.scores.dtype) / 8);
  l.bins_off = 0;
  l.cols_off = align_up(slots * 8, 16);
  l.index_off = l.cols_off + align_up(cap2 * 8, 16);
  l.keys_off = l.index_off + align_up(cap2 * 8, 16);
  l.bytes = align_up(l.keys_off + cap2 * kb, 256);
  return l;
}

template <DType D, bool kShared>
__global__ void __launch_bounds__(kThreads)
count_before_kernel(CountBeforeArgs a, Layout l,
                    unsigned char* workspace) {  // (gridDim.x, l.bytes), global path only
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* region;
  if constexpr (kShared) region = smem;
  else region = workspace + static_cast<size_t>(blockIdx.x) * l.bytes;
  auto* bins = reinterpret_cast<unsigned long long*>(region + l.bins_off);  // (cap+1,)
  int64_t* qcols = reinterpret_cast<int64_t*>(region + l.cols_off);                       // (cap2,)
  int64_t* qindex = reinterpret_cast<int64_t*>(region + l.index_off);                     // (cap2,)
  K* qkeys = reinterpret_cast<K*>(region + l.keys_off);                                   // (cap2,)

  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int tid = static_cast<int>(threadIdx.x);

  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    const int64_t q0 = a.query_offsets[p];
    // More queries than max_queries (a misuse the Python layer prevents) would
    // overflow the scratch: the extra ones are left out and reported as -1.
    const int64_t n_all = a.query_offsets[p + 1] - q0;
    const int64_t n = std::min<int64_t>(n_all, l.cap);
    if (n_all <= 0) continue;  // block-uniform: every thread skips together
    int64_t n2 = 1;
    while (n2 < n) n2 <<= 1;
    for (int64_t i = tid; i < n2; i += kThreads) {
      if (i < n) {
        qkeys[i] = static_cast<K>(a.query_keys[q0 + i]);
        qcols[i] = a.query_cols[q0 + i];
        qindex[i] = q0 + i;
      } else {  // padding sorts after every real entry
        qkeys[i] = K(0);
        qcols[i] = INT64_MAX;
        qindex[i] = -1;
      }
    }
    for (int64_t i = tid; i <= n; i += kThreads) bins[i] = 0ull;
    for (int64_t i = n + tid; i < n_all; i += kThreads) a.counts[q0 + i] = -1;
    __syncthreads();
    rank_order::bitonic_rank_sort(qkeys, qcols, qindex, n2);
    rank_order::bin_row<D>(base + p * sr, G, sc, a.col_offset, qkeys, qcols, n, bins);
    __syncthreads();
    if (tid == 0) {
      int64_t before = 0;
      for (int64_t i = 0; i < n; ++i) {
        before += static_cast<int64_t>(bins[i]);  // binned at or above i: precedes query i
        a.counts[qindex[i]] = before;
      }
    }
    __syncthreads();  // the next row reuses the scratch
  }
}

}  // namespace

size_t count_before_cuda_workspace(const CountBeforeArgs& args) {
  check_count_before_args(args);
  if (args.scores.rows == 0) return 0;
  return rank_order::workspace_bytes(rank_order::row_scratch(args.scores.rows,
                                                             make_layout(args).bytes));
}

void count_before_cuda(const CountBeforeArgs& a, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream) {
  check_count_before_args(a);
  const int64_t P = a.scores.rows;
  if (P == 0) return;
  if (a.query_offsets == nullptr || a.counts == nullptr)
    throw InvalidArgument("count_before: null offsets or output buffer");
  const Layout l = make_layout(a);
  const rank_order::RowScratch plan = rank_order::row_scratch(P, l.bytes);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    rank_order::launch_rows(count_before_kernel<D, true>, count_before_kernel<D, false>, plan, a,
                            l, workspace, workspace_bytes, kThreads, stream, "count_before");
    return 0;
  });
}

}  // namespace qme
