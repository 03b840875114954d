// CUDA twin of rank_counts (rank_counts_cpu.cpp): one thread block per probe
// row. The row's goods of all modes are gathered into one list and sorted by
// rank, then the whole row is streamed once: an entry that does not rank above
// the lowest good is dropped after one comparison, the others binary-search the
// union once and bump an integer counter. Each mode then walks the union in
// rank order, adding its own junk corrections; AP is summed by one thread per
// mode in the CPU's order, so the doubles come out bit-identical to the CPU twin.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops_cuda.h"
#include "rank_order.cuh"

namespace qme {
namespace {

constexpr int kMaxModes = 3;
constexpr int kThreads = 256;  // multiple of 32: the stream loop relies on whole warps
using rank_order::align_up;
using rank_order::first_preceded;
using rank_order::pow2_ceil;

// Per-block scratch for one row: the rank-sorted union of goods (padded to a
// power of two for the bitonic sort), the stream's per-slot counts and each
// mode's junk corrections.
struct Layout {
  int64_t cap;      // union entries a row can hold (max_candidates, at least 1)
  int64_t cap2;     // power of two >= cap: sort buffer length
  size_t counts_off, junk_off, cols_off, keys_off, flags_off;
  size_t bytes;     // whole block region, 256-aligned so regions stay aligned in the workspace
};

Layout make_layout(const RankCountsArgs& a) {
  Layout l{};
  const size_t M = static_cast<size_t>(std::max(1, std::min(kMaxModes, a.num_modes)));
  l.cap = std::max<int64_t>(1, a.max_candidates);
  l.cap2 = pow2_ceil(l.cap);
  const size_t slots = static_cast<size_t>(l.cap + 1), cap2 = static_cast<size_t>(l.cap2);
  const size_t kb = static_cast<size_t>(key_bits(a.scores.dtype) / 8);
  l.counts_off = 0;
  l.junk_off = align_up(slots * 8, 16);
  l.cols_off = l.junk_off + align_up(M * slots * 8, 16);
  l.keys_off = l.cols_off + align_up(cap2 * 8, 16);
  l.flags_off = l.keys_off + align_up(cap2 * kb, 16);
  l.bytes = align_up(l.flags_off + cap2, 256);
  return l;
}

// kShared: the per-row scratch lives in dynamic shared memory; otherwise in this
// block's region of the global workspace (max_candidates too large for shared
// memory). Both paths run the same code, only the address space differs.
template <DType D, bool kShared>
__global__ void __launch_bounds__(kThreads)
rank_counts_kernel(RankCountsArgs a, Layout l,
                   unsigned char* workspace) {  // (gridDim.x, l.bytes) scratch, global path only
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  extern __shared__ __align__(16) unsigned char smem[];

  unsigned char* region;
  if constexpr (kShared) region = smem;
  else region = workspace + static_cast<size_t>(blockIdx.x) * l.bytes;
  unsigned long long* counts = reinterpret_cast<unsigned long long*>(region + l.counts_off);  // (cap+1,)
  unsigned long long* junk = reinterpret_cast<unsigned long long*>(region + l.junk_off);      // (M, cap+1)
  int64_t* ucols = reinterpret_cast<int64_t*>(region + l.cols_off);                           // (cap2,)
  K* ukeys = reinterpret_cast<K*>(region + l.keys_off);                                       // (cap2,)
  uint8_t* uflags = region + l.flags_off;                                                     // (cap2,)

  __shared__ unsigned long long s_count;  // union entries seen (exceeds cap only on misuse)
  __shared__ int64_t s_begin, s_end;

  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int M = a.num_modes;
  const unsigned good_bits = M >= 3 ? 0x15u : (M == 2 ? 0x05u : 0x01u);
  const unsigned junk_bits = good_bits << 1;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t cap = l.cap, slots = cap + 1;

  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    if (tid == 0) {
      s_begin = a.cand_offsets[p];
      s_end = a.cand_offsets[p + 1];
      s_count = 0;
    }
    __syncthreads();
    const int64_t c_begin = s_begin, c_end = s_end;
    const S* row = base + p * sr;

    // Gather the union of goods; slot order is arbitrary, the sort below makes
    // it canonical. Columns outside [0, G) are dropped: the CPU twin would read
    // out of bounds, here that would fault the whole context.
    for (int64_t c = c_begin + tid; c < c_end; c += kThreads) {
      const unsigned f = a.cand_flags[c];
      if (!(f & good_bits)) continue;
      const int64_t j = a.cand_index[c];
      if (j < 0 || j >= G) continue;
      const unsigned long long slot = atomicAdd(&s_count, 1ull);
      if (slot < static_cast<unsigned long long>(cap)) {
        ukeys[slot] = T::key(row[j * sc]);
        ucols[slot] = j;
        uflags[slot] = static_cast<uint8_t>(f);
      }
    }
    __syncthreads();

    const unsigned long long seen = s_count;
    const bool overflow = seen > static_cast<unsigned long long>(cap);
    const int64_t n = overflow ? cap : static_cast<int64_t>(seen);
    int64_t n2 = 1;
    while (n2 < n) n2 <<= 1;

    // Padding sorts after every real entry: key 0 (NaN) is the lowest key and
    // no real column reaches INT64_MAX.
    for (int64_t i = n + tid; i < n2; i += kThreads) {
      ukeys[i] = K(0);
      ucols[i] = INT64_MAX;
      uflags[i] = 0;
    }
    for (int64_t i = tid; i <= n; i += kThreads) counts[i] = 0ull;
    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m)
      for (int64_t i = tid; i <= n; i += kThreads) junk[m * slots + i] = 0ull;
    __syncthreads();

    // Bitonic sort into rank order (n2 is block-uniform: every thread reaches every barrier).
    rank_order::bitonic_rank_sort(ukeys, ucols, uflags, n2);

    if (n > 0) {
      // Junk of mode m is counted by the stream like any entry; take it back
      // out of mode m only (a junk flag counts whatever the good flags say,
      // as in the CPU twin). Unsigned wrap-around is fine: each mode's running
      // total is a true count >= 0 and modular sums are order-independent.
      for (int64_t c = c_begin + tid; c < c_end; c += kThreads) {
        const unsigned f = a.cand_flags[c];
        if (!(f & junk_bits)) continue;
        const int64_t j = a.cand_index[c];
        if (j < 0 || j >= G) continue;
        const int64_t u = first_preceded(T::key(row[j * sc]), j, ukeys, ucols, n);
        if (u >= n) continue;
        #pragma unroll
        for (int m = 0; m < kMaxModes && m < M; ++m)
          if (f & (2u << (2 * m))) atomicAdd(&junk[m * slots + u], ~0ull);
      }

      // The single coalesced pass over the row; an entry that does not precede
      // the lowest good precedes no good of any mode (it is dropped after one
      // comparison instead of landing in the never-read slot n).
      rank_order::bin_row<D>(row, G, sc, 0, ukeys, ucols, n, counts);
    }
    __syncthreads();

    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m) {
      if (tid != m) continue;
      const int64_t out = m * P + p;
      if (overflow) {
        // max_candidates understated this row's candidates: goods were lost,
        // so flag the row instead of returning wrong ranks.
        a.num_good[out] = -1;
        a.first_pos[out] = -1;
        a.last_pos[out] = -1;
        a.ap[out] = __longlong_as_double(0x7FF8000000000000ll);
        a.r_hits[out] = -1;
        a.map_r[out] = __longlong_as_double(0x7FF8000000000000ll);
        continue;
      }
      const unsigned good_m = 1u << (2 * m);
      int64_t before = 0, i_m = 0;
      double sum = 0.0;
      int64_t last = -1;
      a.first_pos[out] = -1;
      for (int64_t u = 0; u < n; ++u) {
        // everything counted at slots <= u ranks above union[u]
        before += static_cast<int64_t>(counts[u] + junk[m * slots + u]);
        if (!(uflags[u] & good_m)) continue;
        if (i_m == 0) a.first_pos[out] = before;
        last = before;
        sum += static_cast<double>(i_m + 1) / static_cast<double>(before + 1);
        ++i_m;
      }
      a.num_good[out] = i_m;
      a.last_pos[out] = last;
      a.ap[out] = i_m ? sum / static_cast<double>(i_m) : 0.0;
      // R-precision / MAP@R with R = n: the same walk again, keeping the goods at
      // positions < R (a prefix of them), summed in the CPU twin's order
      const int64_t R = i_m;
      before = 0;
      i_m = 0;
      sum = 0.0;
      for (int64_t u = 0; u < n && i_m < R; ++u) {
        before += static_cast<int64_t>(counts[u] + junk[m * slots + u]);
        if (!(uflags[u] & good_m)) continue;
        if (before >= R) break;
        sum += static_cast<double>(i_m + 1) / static_cast<double>(before + 1);
        ++i_m;
      }
      a.r_hits[out] = i_m;
      a.map_r[out] = R ? sum / static_cast<double>(R) : 0.0;
    }
    __syncthreads();  // the next row reuses the scratch and s_count
  }
}

}  // namespace

size_t rank_counts_cuda_workspace(const RankCountsArgs& args) {
  check_rank_counts_args(args);
  if (args.scores.rows == 0) return 0;
  return rank_order::workspace_bytes(rank_order::row_scratch(args.scores.rows,
                                                             make_layout(args).bytes));
}

void rank_counts_cuda(const RankCountsArgs& a, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  check_rank_counts_args(a);
  const int64_t P = a.scores.rows;
  if (P == 0) return;
  // cand_index/cand_flags may be null: a block whose rows hold no candidate passes empty
  // tensors, and the kernel reads them only inside the (then empty) offset ranges
  if (a.cand_offsets == nullptr || a.first_pos == nullptr || a.ap == nullptr ||
      a.num_good == nullptr || a.last_pos == nullptr || a.r_hits == nullptr || a.map_r == nullptr)
    throw InvalidArgument("rank_counts: null offsets or output buffer");
  const Layout l = make_layout(a);
  const rank_order::RowScratch plan = rank_order::row_scratch(P, l.bytes);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    rank_order::launch_rows(rank_counts_kernel<D, true>, rank_counts_kernel<D, false>, plan, a, l,
                            workspace, workspace_bytes, kThreads, stream, "rank_counts");
    return 0;
  });
}

}  // namespace qme
