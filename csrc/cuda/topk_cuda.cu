// CUDA twin of topk (topk_cpu.cpp): an exact radix select per row.
//
// Every entry gets a unique composite key (selection key, reversed column
// G - 1 - col): higher is better, so the k winners are exactly the k largest
// composites and ties go to the lower column. The composite is fixed 11 bits at
// a time, key digits first, then (only for rows whose k-th key is tied) column
// digits. Each pass is one kernel over (row, segment) blocks: a block counts the
// digit of the entries that match the row's prefix in a shared-memory histogram
// and adds it to the row's global histogram; the last block of the row to finish
// (ticket counter) scans that histogram, fixes the digit, and decides:
//   done      - the bin holds exactly the winners still needed: the winners are
//               the entries at or above the prefix;
//   compact   - the bin is small enough (<= cap): the next pass, which reads the
//               row anyway, also writes the entries above the prefix to the
//               output and those on it to a candidate buffer; later passes read
//               only that buffer.
// On typical data a row is read twice (first digit, then compaction) whatever G
// is. A gather pass collects the remaining winners, and a bitonic sort in shared
// memory orders the k winners best first and copies their stored values.
// Several blocks share a row when P is small (P = 1, G = 10^7); one block owns a
// row when P is large. Rows are processed in chunks so the workspace stays
// bounded. Counts are integers, so results do not depend on scheduling.
// G >= 2^32: the row histograms are 64-bit; a block's shared histogram stays
// 32-bit because no block reads more than kMaxPerBlock < 2^32 entries of a row
// (more segments per row when G is larger); output and candidate slots are at
// most k and cap (< 2^32) by construction.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops.h"
#include "qme/topk.h"

namespace qme {
namespace {

constexpr int kThreads = 256;                    // multiple of 32: warp intrinsics need whole warps
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;                        // loads in flight per thread per step
constexpr int kTile = kThreads * kItems;
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kMaxDigits = 12;                   // 64-bit key (6) + column < 2^63 (6)
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kPartKey = 0, kPartColumn = 1;
constexpr int64_t kMinPerBlock = 16384;          // entries a block reads per pass, at least
constexpr int64_t kMaxPerBlock = int64_t{1} << 31;  // and at most (its 32-bit shared counts)
constexpr size_t kBudget = size_t{256} << 20;    // workspace bytes aimed at (state + histograms + buffers)
constexpr size_t kAlign = 256;
static_assert(kBins % kThreads == 0, "each thread scans whole bins");

struct Digit {
  int part;   // kPartKey or kPartColumn
  int shift;  // low bit of the digit within its part
  int bits;   // 1..kDigitBits
};

struct Schedule {
  int count;
  Digit digit[kMaxDigits];
};

// Per-row select state (workspace). The prefix is resolved down to bit
// res_shift of part res_part (for the column part, the whole key is fixed).
struct RowState {
  unsigned long long prefix_key;  // fixed selection-key bits
  unsigned long long prefix_rev;  // fixed reversed-column bits
  long long need;                 // winners still to find among entries on the prefix
  unsigned int taken;             // output slots filled (entries above the prefix)
  unsigned int num_cand;          // entries in the candidate buffer
  unsigned int blocks_done;       // ticket of the current pass
  int res_part, res_shift;
  int done;                       // winners = entries at or above the prefix
  int compacted;                  // later passes read the candidate buffer
  int compact_now;                // the next pass fills the candidate buffer
};

template <typename K>
struct Cand {
  K key;      // selection key
  long long col;
};

// -1, 0, +1: the entry's composite, cut at the row's resolution, vs the prefix.
template <typename K>
__device__ __forceinline__ int cmp_prefix(K key, unsigned long long rev, int part, int shift,
                                          unsigned long long pk, unsigned long long pr) {
  constexpr int kBits = static_cast<int>(sizeof(K) * 8);
  if (part == kPartKey) {
    if (shift >= kBits) return 0;  // nothing fixed yet
    const K a = key >> shift, b = static_cast<K>(pk) >> shift;
    return (a > b) - (a < b);
  }
  const K kk = static_cast<K>(pk);
  if (key != kk) return key > kk ? 1 : -1;
  const unsigned long long a = rev >> shift, b = pr >> shift;  // shift <= 63
  return (a > b) - (a < b);
}

template <typename K>
__device__ __forceinline__ int digit_of(K key, unsigned long long rev, const Digit& d) {
  const unsigned long long v = d.part == kPartKey ? static_cast<unsigned long long>(key) : rev;
  return static_cast<int>((v >> d.shift) & ((1ull << d.bits) - 1));
}

// Warp-aggregated append: one atomic per warp. Every lane of the warp must call
// it; returns the slot of this lane (meaningful only where pred).
__device__ __forceinline__ unsigned warp_append(bool pred, unsigned* counter) {
  const unsigned mask = __ballot_sync(kFullMask, pred);
  if (mask == 0) return 0;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int leader = __ffs(mask) - 1;
  unsigned base = 0;
  if (lane == leader) base = atomicAdd(counter, static_cast<unsigned>(__popc(mask)));
  base = __shfl_sync(kFullMask, base, leader);
  return base + static_cast<unsigned>(__popc(mask & ((1u << lane) - 1u)));
}

// Exclusive prefix sum over the block, in thread order.
__device__ unsigned long long block_exclusive_sum(unsigned long long v, unsigned long long* warp_sums) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  unsigned long long x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    const unsigned long long w = lane < kWarps ? warp_sums[lane] : 0ull;
    unsigned long long incl = w;
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long y = __shfl_up_sync(kFullMask, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane < kWarps) warp_sums[lane] = incl - w;
  }
  __syncthreads();
  return warp_sums[warp] + x - v;
}

// Visits the entries of one row assigned to this block: entries seg*kTile + ...
// stepping by segs*kTile, from the score row or from the candidate buffer.
// fn(valid, key, col) is called by every thread the same number of times
// (warp-uniform), so it may use warp intrinsics.
template <DType D, typename Fn>
__device__ __forceinline__ void for_each_entry(const TopkArgs& a, int64_t prow, bool from_buffer,
                                               const Cand<typename ScoreTraits<D>::Key>* cand,
                                               int64_t n, int64_t seg, int64_t segs, Fn&& fn) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  const S* row = static_cast<const S*>(a.scores.data) + prow * a.scores.stride_row;
  const int64_t sc = a.scores.stride_col;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t e0 = seg * kTile; e0 < n; e0 += segs * kTile) {
    K key[kItems];
    long long col[kItems];
    bool valid[kItems];
#pragma unroll
    for (int u = 0; u < kItems; ++u) {
      const int64_t e = e0 + u * kThreads + tid;
      valid[u] = e < n;
      key[u] = 0;
      col[u] = 0;
      if (valid[u]) {
        if (from_buffer) {
          key[u] = cand[e].key;
          col[u] = cand[e].col;
        } else {
          key[u] = topk_select_key<K>(T::key(row[e * sc]), a.largest);
          col[u] = e;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kItems; ++u) fn(valid[u], key[u], col[u]);
  }
}

__global__ void init_kernel(RowState* st, int64_t rows, int64_t k, int key_bits) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  RowState s{};
  s.need = k;
  s.res_part = kPartKey;
  s.res_shift = key_bits;  // nothing fixed
  st[r] = s;
}

// Last block of a row: fix the digit from the row's histogram, update the state,
// clear the histogram for the next pass.
__device__ void select_digit(RowState* s, unsigned long long* hist, const Digit& d, int64_t cap,
                             unsigned long long* warp_sums) {
  const int tid = static_cast<int>(threadIdx.x);
  // Read before the scan's barriers: the thread that finds the bin rewrites it.
  const unsigned long long need = static_cast<unsigned long long>(s->need);
  unsigned long long cnt[kBinsPerThread];
  unsigned long long local = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {  // thread 0 holds the highest bins
    cnt[j] = __ldcg(hist + (kBins - 1 - (tid * kBinsPerThread + j)));
    local += cnt[j];
  }
  const unsigned long long before = block_exclusive_sum(local, warp_sums);
  if (before < need && need <= before + local) {  // exactly one thread
    unsigned long long above = before;
    int j = 0;
    while (above + cnt[j] < need) above += cnt[j++];
    const unsigned long long bin = static_cast<unsigned long long>(kBins - 1 - (tid * kBinsPerThread + j));
    if (d.part == kPartKey) s->prefix_key |= bin << d.shift;
    else s->prefix_rev |= bin << d.shift;
    s->res_part = d.part;
    s->res_shift = d.shift;
    const unsigned long long still = need - above;
    s->need = static_cast<long long>(still);
    if (s->compact_now) {
      s->compacted = 1;
      s->compact_now = 0;
    }
    s->done = cnt[j] == still;
    if (!s->done && !s->compacted && cnt[j] <= static_cast<unsigned long long>(cap)) s->compact_now = 1;
  }
  __syncthreads();
  for (int i = tid; i < kBins; i += kThreads) hist[i] = 0ull;
  if (tid == 0) s->blocks_done = 0u;
}

// One digit pass over rows [0, rows) of the chunk starting at absolute row row0.
template <DType D>
__global__ void __launch_bounds__(kThreads)
pass_kernel(TopkArgs a, int64_t row0, int64_t segs, Digit d, RowState* st, unsigned long long* hist,
            Cand<typename ScoreTraits<D>::Key>* cand, int64_t cap) {
  using K = typename ScoreTraits<D>::Key;
  __shared__ unsigned s_hist[kBins];
  __shared__ unsigned long long s_warp[kWarps];
  __shared__ int s_last;
  const int64_t row = blockIdx.x / segs, seg = blockIdx.x % segs;
  RowState* s = st + row;
  if (s->done) return;  // block-uniform
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < kBins; i += kThreads) s_hist[i] = 0u;
  __syncthreads();

  const int part = s->res_part, shift = s->res_shift;
  const unsigned long long pk = s->prefix_key, pr = s->prefix_rev;
  const bool compacting = s->compact_now != 0;
  const bool from_buffer = s->compacted != 0;
  const int64_t G = a.scores.cols;
  const int64_t n = from_buffer ? static_cast<int64_t>(s->num_cand) : G;
  Cand<K>* row_cand = cand + row * cap;
  const int64_t prow = row0 + row;
  int64_t* out = a.indices + prow * a.k;
  for_each_entry<D>(a, prow, from_buffer, row_cand, n, seg, segs,
                    [&](bool valid, K key, long long col) {
    const unsigned long long rev = static_cast<unsigned long long>(G - 1 - col);
    const int c = valid ? cmp_prefix<K>(key, rev, part, shift, pk, pr) : -1;
    if (compacting) {
      const unsigned slot = warp_append(c > 0, &s->taken);
      if (c > 0 && slot < a.k) out[slot] = col;
      const unsigned cslot = warp_append(c == 0, &s->num_cand);
      if (c == 0 && cslot < cap) row_cand[cslot] = Cand<K>{key, col};
    }
    if (c == 0) atomicAdd(&s_hist[digit_of<K>(key, rev, d)], 1u);
  });
  __syncthreads();
  unsigned long long* row_hist = hist + row * kBins;
  for (int i = tid; i < kBins; i += kThreads)
    if (s_hist[i]) atomicAdd(row_hist + i, static_cast<unsigned long long>(s_hist[i]));
  __threadfence();  // this block's counts are visible before its ticket
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&s->blocks_done, 1u) == static_cast<unsigned>(segs - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  select_digit(s, row_hist, d, cap, s_warp);
}

// Appends the winners not yet written: entries at or above the final prefix.
template <DType D>
__global__ void __launch_bounds__(kThreads)
gather_kernel(TopkArgs a, int64_t row0, int64_t segs, RowState* st,
              const Cand<typename ScoreTraits<D>::Key>* cand, int64_t cap) {
  using K = typename ScoreTraits<D>::Key;
  const int64_t row = blockIdx.x / segs, seg = blockIdx.x % segs;
  RowState* s = st + row;
  const int part = s->res_part, shift = s->res_shift;
  const unsigned long long pk = s->prefix_key, pr = s->prefix_rev;
  const bool from_buffer = s->compacted != 0;
  const int64_t G = a.scores.cols;
  const int64_t n = from_buffer ? static_cast<int64_t>(s->num_cand) : G;
  const int64_t prow = row0 + row;
  int64_t* out = a.indices + prow * a.k;
  for_each_entry<D>(a, prow, from_buffer, cand + row * cap, n, seg, segs,
                    [&](bool valid, K key, long long col) {
    const unsigned long long rev = static_cast<unsigned long long>(G - 1 - col);
    const bool win = valid && cmp_prefix<K>(key, rev, part, shift, pk, pr) >= 0;
    const unsigned slot = warp_append(win, &s->taken);
    if (win && slot < a.k) out[slot] = col;
  });
}

// Sorts each row's k winners best first (bitonic, shared memory) and writes the
// indices and the stored values. kp = k rounded up to a power of two.
template <DType D>
__global__ void sort_kernel(TopkArgs a, int64_t row0, int kp) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  extern __shared__ unsigned long long s_mem[];
  long long* s_col = reinterpret_cast<long long*>(s_mem);
  K* s_key = reinterpret_cast<K*>(s_mem + kp);
  const int64_t prow = row0 + blockIdx.x;
  const int64_t G = a.scores.cols, k = a.k;
  const S* row = static_cast<const S*>(a.scores.data) + prow * a.scores.stride_row;
  int64_t* out_idx = a.indices + prow * k;
  S* out_val = static_cast<S*>(a.values) + prow * k;
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  for (int i = tid; i < kp; i += nt) {
    long long col = LLONG_MAX;  // padding (and, defensively, an unfilled slot) sorts last
    K key = 0;
    if (i < k) {
      const long long c = out_idx[i];
      if (c >= 0 && c < G) {
        col = c;
        key = topk_select_key<K>(T::key(row[c * a.scores.stride_col]), a.largest);
      }
    }
    s_col[i] = col;
    s_key[i] = key;
  }
  __syncthreads();
  for (int size = 2; size <= kp; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < kp / 2; i += nt) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool best_first = (lo & size) == 0;
        const bool hi_better = s_key[hi] > s_key[lo] || (s_key[hi] == s_key[lo] && s_col[hi] < s_col[lo]);
        if (hi_better == best_first) {
          const K tk = s_key[lo]; s_key[lo] = s_key[hi]; s_key[hi] = tk;
          const long long tc = s_col[lo]; s_col[lo] = s_col[hi]; s_col[hi] = tc;
        }
      }
      __syncthreads();
    }
  }
  for (int i = tid; i < k; i += nt) {
    const long long c = s_col[i];
    const bool ok = c >= 0 && c < G;
    out_idx[i] = ok ? c : -1;
    out_val[i] = ok ? row[c * a.scores.stride_col] : S{};
  }
}

// ---- host side -----------------------------------------------------------------
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t cand_bytes(DType d) { return d == DType::kFloat64 ? sizeof(Cand<uint64_t>) : sizeof(Cand<uint32_t>); }

struct Plan {
  int64_t rows;       // rows per chunk
  int64_t cap;        // candidate slots per row
  size_t state_off, hist_off, cand_off, total;
  Schedule schedule;
};

Schedule make_schedule(int key_bits, int64_t G) {
  Schedule s{};
  int idx_bits = 1;
  while (idx_bits < 63 && (G - 1) >> idx_bits) ++idx_bits;
  for (int part = kPartKey; part <= kPartColumn; ++part) {
    for (int top = part == kPartKey ? key_bits : idx_bits; top > 0; top -= kDigitBits) {
      const int bits = std::min(kDigitBits, top);
      s.digit[s.count++] = Digit{part, top - bits, bits};
    }
  }
  return s;
}

// Depends only on (P, G, k, dtype), so the workspace query and the run agree.
Plan make_plan(const TopkArgs& a) {
  const int64_t P = a.scores.rows, G = a.scores.cols, k = a.k;
  const size_t cb = cand_bytes(a.scores.dtype);
  const size_t row_fixed = sizeof(RowState) + kBins * sizeof(unsigned long long) +
                           static_cast<size_t>(std::min<int64_t>(G, 2 * k)) * cb;
  Plan p{};
  p.rows = std::max<int64_t>(1, std::min<int64_t>(P, static_cast<int64_t>(kBudget / 2 / row_fixed)));
  const int64_t spare = static_cast<int64_t>(kBudget / 2 / (static_cast<size_t>(p.rows) * cb));
  p.cap = std::min<int64_t>(G, std::max<int64_t>(std::min<int64_t>(G, 2 * k), spare));
  p.state_off = 0;
  p.hist_off = align_up(static_cast<size_t>(p.rows) * sizeof(RowState));
  p.cand_off = p.hist_off + align_up(static_cast<size_t>(p.rows) * kBins * sizeof(unsigned long long));
  p.total = p.cand_off + align_up(static_cast<size_t>(p.rows) * static_cast<size_t>(p.cap) * cb);
  p.schedule = make_schedule(key_bits(a.scores.dtype), G);
  return p;
}

void check_cuda_args(const TopkArgs& a) {
  check_topk_args(a);
  // Output slots are 32-bit counters: k (a row of the bitonic sort) is far below 2^32.
  if (a.k > static_cast<int64_t>(INT_MAX))
    throw InvalidArgument("k: the CUDA topk takes k < 2^31, got " + std::to_string(a.k));
}

template <DType D>
void run_chunk(const TopkArgs& a, const Plan& p, char* ws, int64_t row0, int64_t rows,
               cudaStream_t stream) {
  using K = typename ScoreTraits<D>::Key;
  auto* st = reinterpret_cast<RowState*>(ws + p.state_off);
  auto* hist = reinterpret_cast<unsigned long long*>(ws + p.hist_off);
  auto* cand = reinterpret_cast<Cand<K>*>(ws + p.cand_off);
  const int64_t G = a.scores.cols;
  // Enough blocks to fill the GPU, but none reading fewer than kMinPerBlock entries.
  const int64_t target = static_cast<int64_t>(cuda_detail::sm_count()) * 8;
  // And none more than kMaxPerBlock (32-bit shared counts; only for G > 2^31).
  const int64_t segs = std::max<int64_t>(
      (G + kMaxPerBlock - 1) / kMaxPerBlock,
      std::max<int64_t>(1, std::min<int64_t>((target + rows - 1) / rows,
                                             (G + kMinPerBlock - 1) / kMinPerBlock)));
  const int64_t blocks = rows * segs;
  if (blocks > INT_MAX) throw InvalidArgument("scores: too many rows for one launch");

  QME_CUDA_CHECK(cudaMemsetAsync(hist, 0, static_cast<size_t>(rows) * kBins * sizeof(unsigned long long),
                                 stream));
  // -1 marks a slot no pass filled; the sort kernel never reads through it.
  QME_CUDA_CHECK(cudaMemsetAsync(a.indices + row0 * a.k, 0xFF,
                                 static_cast<size_t>(rows * a.k) * sizeof(int64_t), stream));
  init_kernel<<<static_cast<unsigned>((rows + 255) / 256), 256, 0, stream>>>(st, rows, a.k,
                                                                             key_bits(D));
  QME_CUDA_CHECK_LAUNCH();
  for (int i = 0; i < p.schedule.count; ++i) {
    pass_kernel<D><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        a, row0, segs, p.schedule.digit[i], st, hist, cand, p.cap);
    QME_CUDA_CHECK_LAUNCH();
  }
  gather_kernel<D><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, row0, segs, st, cand,
                                                                            p.cap);
  QME_CUDA_CHECK_LAUNCH();
  int kp = 1;
  while (kp < a.k) kp <<= 1;
  const int sort_threads = std::max(32, std::min(1024, kp / 2));
  const size_t smem = static_cast<size_t>(kp) * (sizeof(long long) + sizeof(K));
  sort_kernel<D><<<static_cast<unsigned>(rows), sort_threads, smem, stream>>>(a, row0, kp);
  QME_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t topk_cuda_workspace(const TopkArgs& args) {
  check_cuda_args(args);
  if (args.scores.rows == 0) return 0;
  return make_plan(args).total;
}

void topk_cuda(const TopkArgs& a, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check_cuda_args(a);
  const int64_t P = a.scores.rows;
  if (P == 0) return;
  if (a.values == nullptr || a.indices == nullptr) throw InvalidArgument("topk: null output buffer");
  const Plan p = make_plan(a);
  if (workspace == nullptr || workspace_bytes < p.total)
    throw InvalidArgument("workspace: expected " + std::to_string(p.total) + " bytes (topk_workspace), got " +
                          std::to_string(workspace_bytes));
  char* ws = static_cast<char*>(workspace);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    for (int64_t row0 = 0; row0 < P; row0 += p.rows)
      run_chunk<D>(a, p, ws, row0, std::min(p.rows, P - row0), stream);
    return 0;
  });
}

}  // namespace qme
