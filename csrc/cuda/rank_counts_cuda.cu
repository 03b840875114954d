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

namespace qme {
namespace {

constexpr int kMaxModes = 3;
constexpr int kThreads = 256;  // multiple of 32: the stream loop relies on whole warps
constexpr unsigned kFullMask = 0xFFFFFFFFu;
// Cap on the total workspace the global-memory fallback asks for: blocks are
// reduced (each walks more rows) rather than growing the workspace with P.
constexpr size_t kFallbackWorkspaceBudget = size_t{256} << 20;
constexpr int64_t kFallbackMaxBlocks = 512;
constexpr size_t kSmemReserve = 1024;  // static __shared__ of the kernel plus slack

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

int64_t pow2_ceil(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

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

bool fits_shared(const Layout& l) {
  return l.bytes + kSmemReserve <= cuda_detail::max_block_smem_optin();
}

int64_t fallback_blocks(const RankCountsArgs& a, const Layout& l) {
  const int64_t by_budget = static_cast<int64_t>(kFallbackWorkspaceBudget / l.bytes);
  return std::max<int64_t>(1, std::min({a.scores.rows, kFallbackMaxBlocks, by_budget}));
}

// `a` ranks before `b`: higher key first, lower gallery index first on ties.
template <typename K>
__device__ __forceinline__ bool precedes(K ka, int64_t ja, K kb, int64_t jb) {
  return ka > kb || (ka == kb && ja < jb);
}

// First slot i of the rank-sorted goods [0, n) that (k, j) precedes, i.e. the
// number of goods ranked at or above it (a good does not precede itself).
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
  const int lane = tid & 31;
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

    // Bitonic sort, rank order ascending. Each step walks the n2/2 compare
    // pairs; n2 is block-uniform, so every thread reaches every barrier.
    const int64_t half = n2 >> 1;
    for (int64_t k = 2; k <= n2; k <<= 1) {
      for (int64_t jj = k >> 1; jj > 0; jj >>= 1) {
        for (int64_t q = tid; q < half; q += kThreads) {
          const int64_t ia = ((q & ~(jj - 1)) << 1) | (q & (jj - 1)), ib = ia + jj;
          const K ka = ukeys[ia], kb = ukeys[ib];
          const int64_t ca = ucols[ia], cb = ucols[ib];
          const bool rank_order = (ia & k) == 0;
          const bool swap = rank_order ? precedes(kb, cb, ka, ca) : precedes(ka, ca, kb, cb);
          if (swap) {
            const uint8_t fa = uflags[ia];
            ukeys[ia] = kb; ukeys[ib] = ka;
            ucols[ia] = cb; ucols[ib] = ca;
            uflags[ia] = uflags[ib]; uflags[ib] = fa;
          }
        }
        __syncthreads();
      }
    }

    if (n > 0) {
      // An entry that does not precede the lowest good precedes no good of any
      // mode: it would only land in the never-read slot n.
      const K fk = ukeys[n - 1];
      const int64_t fc = ucols[n - 1];

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

      // The single coalesced pass over the row. The loop bound is warp-uniform
      // (kThreads is a multiple of 32) so the warp intrinsics see whole warps;
      // lanes that hit the same slot fold into one atomic, which matters for
      // rows where many impostors outrank the first good.
      for (int64_t j0 = 0; j0 < G; j0 += kThreads) {
        const int64_t j = j0 + tid;
        K k = 0;
        if (j < G) k = T::key(row[j * sc]);
        const bool pass = j < G && precedes(k, j, fk, fc);
        const unsigned mask = __ballot_sync(kFullMask, pass);
        if (pass) {
          const int64_t u = first_preceded(k, j, ukeys, ucols, n);  // < n: it precedes union[n-1]
          const unsigned peers = __match_any_sync(mask, static_cast<unsigned long long>(u));
          if (lane == __ffs(peers) - 1)
            atomicAdd(&counts[u], static_cast<unsigned long long>(__popc(peers)));
        }
      }
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
        a.ap[out] = __longlong_as_double(0x7FF8000000000000ll);
        continue;
      }
      const unsigned good_m = 1u << (2 * m);
      int64_t before = 0, i_m = 0;
      double sum = 0.0;
      a.first_pos[out] = -1;
      for (int64_t u = 0; u < n; ++u) {
        // everything counted at slots <= u ranks above union[u]
        before += static_cast<int64_t>(counts[u] + junk[m * slots + u]);
        if (!(uflags[u] & good_m)) continue;
        if (i_m == 0) a.first_pos[out] = before;
        sum += static_cast<double>(i_m + 1) / static_cast<double>(before + 1);
        ++i_m;
      }
      a.num_good[out] = i_m;
      a.ap[out] = i_m ? sum / static_cast<double>(i_m) : 0.0;
    }
    __syncthreads();  // the next row reuses the scratch and s_count
  }
}

void check_args(const RankCountsArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.num_modes < 1 || a.num_modes > 3)
    throw InvalidArgument("num_modes: expected 1..3, got " + std::to_string(a.num_modes));
  if (a.max_candidates < 0)
    throw InvalidArgument("max_candidates: expected >= 0, got " + std::to_string(a.max_candidates));
}

}  // namespace

size_t rank_counts_cuda_workspace(const RankCountsArgs& args) {
  check_args(args);
  if (args.scores.rows == 0) return 0;
  const Layout l = make_layout(args);
  if (fits_shared(l)) return 0;
  return static_cast<size_t>(fallback_blocks(args, l)) * l.bytes;
}

void rank_counts_cuda(const RankCountsArgs& a, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  check_args(a);
  const int64_t P = a.scores.rows;
  if (P == 0) return;
  if (a.cand_offsets == nullptr || a.first_pos == nullptr || a.ap == nullptr ||
      a.num_good == nullptr)
    throw InvalidArgument("rank_counts: null offsets or output buffer");
  const Layout l = make_layout(a);
  const bool shared = fits_shared(l);
  int64_t blocks = std::min<int64_t>(P, int64_t{1} << 20);  // rows are grid-strided
  if (!shared) {
    blocks = fallback_blocks(a, l);
    const size_t need = static_cast<size_t>(blocks) * l.bytes;
    if (workspace == nullptr || workspace_bytes < need)
      throw InvalidArgument("workspace: rank_counts needs " + std::to_string(need) +
                            " bytes, got " + std::to_string(workspace_bytes));
    if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
      throw InvalidArgument("workspace: expected 16-byte alignment");
  }
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
    if (shared) {
      auto kernel = rank_counts_kernel<D, true>;
      // Above 48 KiB dynamic shared memory must be opted into per kernel.
      QME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(l.bytes)));
      kernel<<<grid, block, l.bytes, stream>>>(a, l, nullptr);
    } else {
      rank_counts_kernel<D, false>
          <<<grid, block, 0, stream>>>(a, l, static_cast<unsigned char*>(workspace));
    }
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace qme
