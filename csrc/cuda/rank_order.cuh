// Helpers of the ranking kernels (rank_counts_cuda.cu, count_before_cuda.cu): the
// package's ranking order on (key, column) pairs, a block-wide bitonic sort into
// that order, the single streaming pass that bins every entry of a row by the
// first listed entry it ranks before, and the host-side plan that puts each
// block's per-row scratch in shared memory or in a global workspace.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/common.h"

namespace qme {
namespace rank_order {

constexpr unsigned kFullMask = 0xFFFFFFFFu;

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Smallest power of two >= n, for n <= 2^62; a larger n (a size hint beyond any
// real row: callers clamp hints to G) gives 2^62 instead of overflowing into an
// endless loop.
inline int64_t pow2_ceil(int64_t n) {
  constexpr int64_t kTop = int64_t{1} << 62;
  if (n >= kTop) return kTop;
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// `a` ranks before `b`: higher key first, lower gallery column first on ties.
template <typename K>
__device__ __forceinline__ bool precedes(K ka, int64_t ja, K kb, int64_t jb) {
  return ka > kb || (ka == kb && ja < jb);
}

// First slot i of the rank-sorted list [0, n) that (k, j) precedes, i.e. the
// number of listed entries ranked at or above it (an entry does not precede itself).
template <typename K>
__device__ __forceinline__ int64_t first_preceded(K k, int64_t j, const K* keys, const int64_t* cols,
                                                  int64_t n) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (precedes(k, j, keys[mid], cols[mid])) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// Bitonic sort of (keys, cols, payload)[0, n2) into rank order; n2 is a power of
// two and block-uniform. Every thread of the block must call it (it holds the
// barriers); the caller synchronises before (the inputs are written) and the
// last step's barrier publishes the result.
template <typename K, typename Payload>
__device__ void bitonic_rank_sort(K* keys, int64_t* cols, Payload* payload, int64_t n2) {
  const int64_t half = n2 >> 1;
  for (int64_t k = 2; k <= n2; k <<= 1) {
    for (int64_t jj = k >> 1; jj > 0; jj >>= 1) {
      for (int64_t q = threadIdx.x; q < half; q += blockDim.x) {
        const int64_t ia = ((q & ~(jj - 1)) << 1) | (q & (jj - 1)), ib = ia + jj;
        const K ka = keys[ia], kb = keys[ib];
        const int64_t ca = cols[ia], cb = cols[ib];
        const bool rank_order = (ia & k) == 0;
        const bool swap = rank_order ? precedes(kb, cb, ka, ca) : precedes(ka, ca, kb, cb);
        if (swap) {
          const Payload pa = payload[ia];
          keys[ia] = kb; keys[ib] = ka;
          cols[ia] = cb; cols[ib] = ca;
          payload[ia] = payload[ib]; payload[ib] = pa;
        }
      }
      __syncthreads();
    }
  }
}

// The single coalesced pass over one row: each entry (column col_offset + j)
// that ranks before the lowest listed entry bumps bins[first slot it precedes].
// blockDim.x must be a multiple of 32 so the warp intrinsics see whole warps
// (the loop bound is block-uniform); lanes hitting the same slot fold into one
// atomic, which matters for rows where many entries outrank the first listed one.
template <DType D>
__device__ void bin_row(const typename ScoreTraits<D>::Storage* row, int64_t G, int64_t sc,
                        int64_t col_offset, const typename ScoreTraits<D>::Key* keys,
                        const int64_t* cols, int64_t n, unsigned long long* bins) {
  using T = ScoreTraits<D>;
  using K = typename T::Key;
  const K fk = keys[n - 1];
  const int64_t fc = cols[n - 1];
  const int lane = static_cast<int>(threadIdx.x & 31);
  for (int64_t j0 = 0; j0 < G; j0 += blockDim.x) {
    const int64_t j = j0 + threadIdx.x;
    K k = 0;
    if (j < G) k = T::key(row[j * sc]);
    const int64_t gj = col_offset + j;
    const bool pass = j < G && precedes(k, gj, fk, fc);
    const unsigned mask = __ballot_sync(kFullMask, pass);
    if (pass) {
      const int64_t u = first_preceded(k, gj, keys, cols, n);  // < n: it precedes slot n-1
      const unsigned peers = __match_any_sync(mask, static_cast<unsigned long long>(u));
      if (lane == __ffs(peers) - 1)
        atomicAdd(&bins[u], static_cast<unsigned long long>(__popc(peers)));
    }
  }
}

// ---- where a block's per-row scratch lives (host side) ----------------------
// Cap on the total workspace the global-memory fallback asks for: blocks are
// reduced (each walks more rows) rather than growing the workspace with P.
constexpr size_t kFallbackWorkspaceBudget = size_t{256} << 20;
constexpr int64_t kFallbackMaxBlocks = 512;
constexpr size_t kSmemReserve = 1024;  // static __shared__ of a kernel plus slack

struct RowScratch {
  bool shared;     // dynamic shared memory (no workspace) or the global fallback
  int64_t blocks;  // thread blocks; rows are grid-strided
  size_t bytes;    // scratch of one block
};

inline RowScratch row_scratch(int64_t rows, size_t bytes) {
  RowScratch s{bytes + kSmemReserve <= cuda_detail::max_block_smem_optin(), 1, bytes};
  if (s.shared) {
    s.blocks = std::min<int64_t>(rows, int64_t{1} << 20);
  } else {
    const int64_t by_budget = static_cast<int64_t>(kFallbackWorkspaceBudget / bytes);
    s.blocks = std::max<int64_t>(1, std::min({rows, kFallbackMaxBlocks, by_budget}));
  }
  return s;
}

inline size_t workspace_bytes(const RowScratch& s) {
  return s.shared ? 0 : static_cast<size_t>(s.blocks) * s.bytes;
}

// Launches kernel<true> (scratch in shared memory) or kernel<false> (scratch in
// `workspace`, checked here) with `threads` threads per block on `stream`.
template <typename Args, typename Layout>
void launch_rows(void (*shared_kernel)(Args, Layout, unsigned char*),
                 void (*global_kernel)(Args, Layout, unsigned char*), const RowScratch& s,
                 const Args& a, const Layout& l, void* workspace, size_t workspace_size,
                 int threads, cudaStream_t stream, const char* op) {
  const dim3 grid(static_cast<unsigned>(s.blocks)), block(static_cast<unsigned>(threads));
  if (s.shared) {
    cuda_detail::allow_dynamic_smem(shared_kernel, s.bytes);
    shared_kernel<<<grid, block, s.bytes, stream>>>(a, l, nullptr);
  } else {
    const size_t need = workspace_bytes(s);
    if (workspace == nullptr || workspace_size < need)
      throw InvalidArgument(std::string("workspace: ") + op + " needs " + std::to_string(need) +
                            " bytes, got " + std::to_string(workspace_size));
    if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
      throw InvalidArgument("workspace: expected 16-byte alignment");
    global_kernel<<<grid, block, 0, stream>>>(a, l, static_cast<unsigned char*>(workspace));
  }
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace rank_order
}  // namespace qme
