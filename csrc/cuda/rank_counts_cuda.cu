// CUDA twin of rank_counts (rank_counts_cpu.cpp): one thread block per probe
// row. The row's good candidates are gathered and sorted by rank per mode, then
// the whole row is streamed once; an entry that ranks above the worst good of
// every mode is skipped after one comparison, the others binary-search their
// slot and bump an integer counter. AP is summed by one thread per mode in the
// CPU's order, so the doubles come out bit-identical to the CPU twin.
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

// Per-block scratch: the rank-sorted goods of each mode (padded to a power of
// two for the bitonic sort) and their "entries ranked before good i" counters.
struct Layout {
  int64_t cap;      // goods one mode can hold (max_candidates, at least 1)
  int64_t cap2;     // power of two >= cap: sort buffer length per mode
  size_t before_off, cols_off, keys_off;
  size_t bytes;     // whole block region, 256-aligned so regions stay aligned in the workspace
};

Layout make_layout(const RankCountsArgs& a) {
  Layout l{};
  const int M = std::max(1, std::min(3, a.num_modes));
  l.cap = std::max<int64_t>(1, a.max_candidates);
  l.cap2 = pow2_ceil(l.cap);
  const size_t kb = key_bits(a.scores.dtype) / 8;
  l.before_off = 0;
  l.cols_off = align_up(static_cast<size_t>(M) * static_cast<size_t>(l.cap + 1) * 8, 16);
  l.keys_off = l.cols_off + align_up(static_cast<size_t>(M) * static_cast<size_t>(l.cap2) * 8, 16);
  l.bytes = align_up(l.keys_off + static_cast<size_t>(M) * static_cast<size_t>(l.cap2) * kb, 256);
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

// First slot i in the rank-sorted goods [0, n) that the entry (k, j) precedes.
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
  unsigned long long* before = reinterpret_cast<unsigned long long*>(region + l.before_off);  // (M, cap+1)
  int64_t* gcols = reinterpret_cast<int64_t*>(region + l.cols_off);                          // (M, cap2)
  K* gkeys = reinterpret_cast<K*>(region + l.keys_off);                                      // (M, cap2)

  __shared__ unsigned long long s_count[3];  // goods seen per mode (may exceed cap on misuse)
  __shared__ int64_t s_begin, s_end;

  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int M = a.num_modes;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int64_t cap = l.cap, cap2 = l.cap2, stride_b = cap + 1;

  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    if (tid == 0) {
      s_begin = a.cand_offsets[p];
      s_end = a.cand_offsets[p + 1];
      s_count[0] = s_count[1] = s_count[2] = 0;
    }
    __syncthreads();
    const int64_t c_begin = s_begin, c_end = s_end;
    const S* row = base + p * sr;

    // Gather goods; slot order is arbitrary, the sort below makes it canonical.
    // Columns outside [0, G) are dropped: the CPU twin would read out of bounds,
    // here that would fault the whole context.
    for (int64_t c = c_begin + tid; c < c_end; c += kThreads) {
      const int64_t j = a.cand_index[c];
      const unsigned f = a.cand_flags[c];
      if (j < 0 || j >= G) continue;
      bool any_good = false;
      #pragma unroll
      for (int m = 0; m < kMaxModes && m < M; ++m) any_good |= (f & (1u << (2 * m))) != 0;
      if (!any_good) continue;
      const K k = T::key(row[j * sc]);
      #pragma unroll
      for (int m = 0; m < kMaxModes && m < M; ++m) {
        if (!(f & (1u << (2 * m)))) continue;
        const unsigned long long slot = atomicAdd(&s_count[m], 1ull);
        if (slot < static_cast<unsigned long long>(cap)) {
          gkeys[m * cap2 + static_cast<int64_t>(slot)] = k;
          gcols[m * cap2 + static_cast<int64_t>(slot)] = j;
        }
      }
    }
    __syncthreads();

    int64_t n[3] = {0, 0, 0};
    bool overflow[3] = {false, false, false};
    int64_t nmax = 0;
    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m) {
      const unsigned long long cnt = s_count[m];
      overflow[m] = cnt > static_cast<unsigned long long>(cap);
      n[m] = overflow[m] ? cap : static_cast<int64_t>(cnt);
      nmax = n[m] > nmax ? n[m] : nmax;
    }
    int64_t n2 = 1;
    while (n2 < nmax) n2 <<= 1;

    // Padding sorts after every real entry: key 0 (NaN) is the lowest key and
    // no real column reaches INT64_MAX.
    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m)
      for (int64_t i = n[m] + tid; i < n2; i += kThreads) {
        gkeys[m * cap2 + i] = K(0);
        gcols[m * cap2 + i] = INT64_MAX;
      }
    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m)
      for (int64_t i = tid; i <= n[m]; i += kThreads) before[m * stride_b + i] = 0ull;
    __syncthreads();

    // Bitonic sort of all modes at once, rank order ascending. Each step walks
    // the n2/2 compare pairs of every mode; n2 is block-uniform, so every
    // thread reaches every barrier.
    const int64_t half = n2 >> 1;
    for (int64_t k = 2; k <= n2; k <<= 1) {
      for (int64_t jj = k >> 1; jj > 0; jj >>= 1) {
        for (int64_t t = tid; t < M * half; t += kThreads) {
          const int64_t m = t / half, q = t - m * half;
          const int64_t i = ((q & ~(jj - 1)) << 1) | (q & (jj - 1));
          const int64_t ia = m * cap2 + i, ib = ia + jj;
          const K ka = gkeys[ia], kb = gkeys[ib];
          const int64_t ca = gcols[ia], cb = gcols[ib];
          const bool rank_order = (i & k) == 0;
          const bool swap = rank_order ? precedes(kb, cb, ka, ca) : precedes(ka, ca, kb, cb);
          if (swap) {
            gkeys[ia] = kb; gkeys[ib] = ka;
            gcols[ia] = cb; gcols[ib] = ca;
          }
        }
        __syncthreads();
      }
    }

    if (nmax > 0) {
      // Floor = the lowest-ranked of the modes' last goods: an entry that does
      // not precede it precedes no good of any mode and only lands in the
      // unused slots before[n_m], so skipping it changes nothing.
      K fk = 0;
      int64_t fc = 0;
      bool have_floor = false;
      #pragma unroll
      for (int m = 0; m < kMaxModes && m < M; ++m) {
        if (n[m] == 0) continue;
        const K lk = gkeys[m * cap2 + n[m] - 1];
        const int64_t lc = gcols[m * cap2 + n[m] - 1];
        if (!have_floor || precedes(fk, fc, lk, lc)) { fk = lk; fc = lc; have_floor = true; }
      }

      // Junk entries are counted by the stream like any other; take them back
      // out. Unsigned wrap-around is fine: each final counter is a true count
      // >= 0, and modular sums are order-independent.
      for (int64_t c = c_begin + tid; c < c_end; c += kThreads) {
        const int64_t j = a.cand_index[c];
        const unsigned f = a.cand_flags[c];
        if (j < 0 || j >= G) continue;
        bool have_key = false;
        K k = 0;
    #pragma unroll
        for (int m = 0; m < kMaxModes && m < M; ++m) {
          if ((f & (1u << (2 * m))) || !(f & (2u << (2 * m)))) continue;
          if (!have_key) { k = T::key(row[j * sc]); have_key = true; }
          const int64_t idx = first_preceded(k, j, gkeys + m * cap2, gcols + m * cap2, n[m]);
          if (idx < n[m]) atomicAdd(&before[m * stride_b + idx], ~0ull);
        }
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
          #pragma unroll
          for (int m = 0; m < kMaxModes && m < M; ++m) {
            const int64_t idx = first_preceded(k, j, gkeys + m * cap2, gcols + m * cap2, n[m]);
            const unsigned peers =
                __match_any_sync(mask, static_cast<unsigned long long>(idx));
            if (lane == __ffs(peers) - 1 && idx < n[m])
              atomicAdd(&before[m * stride_b + idx], static_cast<unsigned long long>(__popc(peers)));
          }
        }
      }
    }
    __syncthreads();

    #pragma unroll
    for (int m = 0; m < kMaxModes && m < M; ++m) {
      if (tid != m) continue;
      const int64_t out = m * P + p;
      if (overflow[m]) {
        // max_candidates understated this row's candidates: the goods that did
        // not fit are lost, so flag the row instead of returning wrong ranks.
        a.num_good[out] = static_cast<int64_t>(s_count[m]);
        a.first_pos[out] = -1;
        a.ap[out] = __longlong_as_double(0x7FF8000000000000ll);
      } else if (n[m] == 0) {
        a.num_good[out] = 0;
        a.first_pos[out] = -1;
        a.ap[out] = 0.0;
      } else {
        int64_t pos = 0;
        double sum = 0.0;
        for (int64_t i = 0; i < n[m]; ++i) {
          pos += static_cast<int64_t>(before[m * stride_b + i]);
          sum += static_cast<double>(i + 1) / static_cast<double>(pos + 1);
          if (i == 0) a.first_pos[out] = pos;
        }
        a.num_good[out] = n[m];
        a.ap[out] = sum / static_cast<double>(n[m]);
      }
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
