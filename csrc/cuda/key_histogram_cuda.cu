// CUDA twin of key_histogram (key_histogram_cpu.cpp): a grid-stride pass over
// every score. Blocks count privately in shared-memory uint32 counters and
// flush once when the F x 2^digit_bits output fits; an unfiltered digit too
// wide for shared memory (2^16 bins) is cut into slot ranges, one per sibling
// block reading the same data. Otherwise (wide digit under a prefix filter,
// where few scores hit any histogram) lanes hitting the same bin are folded per
// warp and added straight into the int64 output. Everything is integer, so the
// result does not depend on scheduling.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops_cuda.h"

namespace qme {
namespace {

constexpr int kThreads = 256;  // multiple of 32: warp intrinsics need whole warps
constexpr unsigned kFullMask = 0xFFFFFFFFu;
// Private histograms beyond this would leave fewer than three blocks per SM.
constexpr size_t kMaxSharedHistBytes = 64 * 1024;
// An unfiltered 2^16-bin digit is cut into at most this many slot ranges.
constexpr int32_t kMaxSplits = 16;
constexpr size_t kSmemReserve = 1024;
// A block's private uint32 counters must not wrap: keep each block's share of
// the elements below 2^30.
constexpr int64_t kMaxElementsPerBlock = int64_t{1} << 30;

template <typename K>
__device__ __forceinline__ K warp_min(K v) {
  for (int o = 16; o > 0; o >>= 1) {
    const K w = __shfl_xor_sync(kFullMask, v, o);
    v = w < v ? w : v;
  }
  return v;
}

template <typename K>
__device__ __forceinline__ K warp_max(K v) {
  for (int o = 16; o > 0; o >>= 1) {
    const K w = __shfl_xor_sync(kFullMask, v, o);
    v = w > v ? w : v;
  }
  return v;
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// kSharedHist: private uint32 counters in dynamic shared memory. They cover the
// histogram slots [r * span, (r + 1) * span) of the flattened (max(F, 1), 2^bits)
// output, r = blockIdx.x % splits: when the whole output does not fit, `splits`
// sibling blocks (adjacent ids, so they run together and the second read of a
// chunk hits L2) each read the same chunk and count only their slot range.
// kLinear: element e of the row-major flattening sits at e * stride_col (one row,
// or rows packed back to back), which saves a 64-bit division per element.
template <DType D, bool kSharedHist, bool kLinear>
__global__ void __launch_bounds__(kThreads)
key_histogram_kernel(KeyHistogramArgs a, int64_t total, int64_t span, int32_t splits) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  constexpr int kBits = static_cast<int>(sizeof(K) * 8);
  extern __shared__ unsigned int s_hist[];  // (span,) kSharedHist only
  __shared__ unsigned long long s_nan, s_lo, s_hi;

  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t G = a.scores.cols, sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int64_t nbins = int64_t{1} << a.digit_bits;
  const int F = a.num_prefixes;
  const K digit_mask = static_cast<K>(nbins - 1);
  const K nan_key = static_cast<K>(a.nan_key);
  // prefix_shift may be the key width ("no prefix bits"): shifting by it is
  // undefined, the CPU twin defines the prefix as 0 there, and so do we.
  // Without prefixes the shift is never used and may be anything.
  const bool whole_key_prefix = a.prefix_shift >= kBits;
  const int prefix_shift = (whole_key_prefix || a.prefix_shift < 0) ? 0 : a.prefix_shift;
  unsigned long long* hist = reinterpret_cast<unsigned long long*>(a.hist);
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int split = static_cast<int>(blockIdx.x % static_cast<unsigned>(splits));
  const int64_t chunk = blockIdx.x / static_cast<unsigned>(splits);
  const int64_t chunks = gridDim.x / static_cast<unsigned>(splits);
  const int64_t slot_lo = static_cast<int64_t>(split) * span;
  // Every sibling sees every element; only one of them may count the scalars.
  const bool count_scalars = split == 0;

  if (tid == 0) { s_nan = 0; s_lo = ~0ull; s_hi = 0; }
  if constexpr (kSharedHist)
    for (int64_t i = tid; i < span; i += kThreads) s_hist[i] = 0u;
  __syncthreads();

  unsigned long long nans = 0;
  K lo = ~K(0), hi = 0;
  const int64_t step = chunks * kThreads;
  // The bound is warp-uniform so every lane reaches the warp intrinsics below.
  for (int64_t e0 = chunk * kThreads; e0 < total; e0 += step) {
    const int64_t e = e0 + tid;
    const bool valid = e < total;
    K k = 0;
    if (valid) {
      int64_t off;
      if constexpr (kLinear) {
        off = e * sc;
      } else {
        const int64_t p = e / G;
        off = p * sr + (e - p * G) * sc;
      }
      k = T::key(base[off]);
      if (k == 0) { ++nans; k = nan_key; }
      else { lo = k < lo ? k : lo; hi = k > hi ? k : hi; }
    }
    const int64_t bin = static_cast<int64_t>((k >> a.digit_shift) & digit_mask);
    const K pre = whole_key_prefix ? K(0) : static_cast<K>(k >> prefix_shift);
    for (int f = 0; f < (F > 0 ? F : 1); ++f) {
      const bool hit = valid && (F == 0 || pre == static_cast<K>(__ldg(a.prefixes + f)));
      const int64_t target = static_cast<int64_t>(f) * nbins + bin;
      if constexpr (kSharedHist) {
        const int64_t t = target - slot_lo;
        if (hit && t >= 0 && t < span) atomicAdd(&s_hist[t], 1u);
      } else {
        // Skewed scores (many ties) would serialise on one bin: one atomic
        // per distinct bin per warp instead of one per lane.
        const unsigned hits = __ballot_sync(kFullMask, hit);
        if (hit) {
          const unsigned peers =
              __match_any_sync(hits, static_cast<unsigned long long>(target));
          if (lane == __ffs(peers) - 1)
            atomicAdd(&hist[target], static_cast<unsigned long long>(__popc(peers)));
        }
      }
    }
  }

  // Block reduction of the scalars; keys widen to 64 bits so both key widths
  // share the output atomics. A thread without non-NaN scores holds lo > hi.
  nans = warp_sum(nans);
  lo = warp_min(lo);
  hi = warp_max(hi);
  if (lane == 0 && count_scalars) {
    if (nans) atomicAdd(&s_nan, nans);
    if (lo <= hi) {
      atomicMin(&s_lo, static_cast<unsigned long long>(lo));
      atomicMax(&s_hi, static_cast<unsigned long long>(hi));
    }
  }
  __syncthreads();
  if (tid == 0 && count_scalars) {
    if (s_nan) atomicAdd(reinterpret_cast<unsigned long long*>(a.nan_count), s_nan);
    if (s_lo <= s_hi) {
      atomicMin(reinterpret_cast<unsigned long long*>(a.min_key), s_lo);
      atomicMax(reinterpret_cast<unsigned long long*>(a.max_key), s_hi);
    }
  }
  if constexpr (kSharedHist) {
    for (int64_t i = tid; i < span; i += kThreads) {
      const unsigned v = s_hist[i];
      if (v) atomicAdd(&hist[slot_lo + i], static_cast<unsigned long long>(v));
    }
  }
}

void check_args(const KeyHistogramArgs& a) {
  check_matrix(a.scores, "scores");
  const int kb = key_bits(a.scores.dtype);
  if (a.digit_bits < 1 || a.digit_bits > 16 || a.digit_shift < 0 || a.digit_shift + a.digit_bits > kb)
    throw InvalidArgument("digit_shift/digit_bits: digit out of the " + std::to_string(kb) + "-bit key");
  if (a.num_prefixes < 0 || (a.num_prefixes > 0 && a.prefixes == nullptr))
    throw InvalidArgument("prefixes: expected num_prefixes >= 0 and a buffer when > 0");
  // The CPU twin leaves a negative shift undefined; on the device it must not happen.
  if (a.num_prefixes > 0 && a.prefix_shift < 0)
    throw InvalidArgument("prefix_shift: expected >= 0, got " + std::to_string(a.prefix_shift));
}

}  // namespace

size_t key_histogram_cuda_workspace(const KeyHistogramArgs& args) {
  check_args(args);
  return 0;
}

void key_histogram_cuda(const KeyHistogramArgs& a, void* /*workspace*/, size_t /*workspace_bytes*/,
                        cudaStream_t stream) {
  check_args(a);
  if (a.hist == nullptr || a.nan_count == nullptr || a.min_key == nullptr || a.max_key == nullptr)
    throw InvalidArgument("key_histogram: null output buffer");
  const int64_t nbins = int64_t{1} << a.digit_bits;
  const int64_t nh = static_cast<int64_t>(std::max(1, a.num_prefixes)) * nbins;
  QME_CUDA_CHECK(cudaMemsetAsync(a.hist, 0, static_cast<size_t>(nh) * sizeof(int64_t), stream));
  QME_CUDA_CHECK(cudaMemsetAsync(a.nan_count, 0, sizeof(int64_t), stream));
  QME_CUDA_CHECK(cudaMemsetAsync(a.min_key, 0xFF, sizeof(uint64_t), stream));  // ~0: no key yet
  QME_CUDA_CHECK(cudaMemsetAsync(a.max_key, 0, sizeof(uint64_t), stream));
  const int64_t P = a.scores.rows, G = a.scores.cols;
  if (P == 0 || G == 0) return;
  const int64_t total = P * G;

  // Shared-memory counting when the whole output fits, or when every score
  // lands in some bin (no prefix filter) and the output can be cut into a few
  // slot ranges; with prefixes most scores miss every histogram, so the few
  // hits go straight to global memory.
  const size_t smem_cap = std::min(kMaxSharedHistBytes, cuda_detail::max_block_smem_optin() - kSmemReserve);
  const int64_t max_span = static_cast<int64_t>(smem_cap / sizeof(unsigned int));
  int64_t span = nh;
  int32_t splits = 1;
  bool shared = nh <= max_span;
  if (!shared && a.num_prefixes == 0) {
    while (span > max_span && splits < kMaxSplits) { span >>= 1; splits <<= 1; }  // nh is 2^bits
    shared = span <= max_span;
    if (!shared) { span = nh; splits = 1; }
  }
  const size_t hist_bytes = shared ? static_cast<size_t>(span) * sizeof(unsigned int) : 0;
  const bool linear = P == 1 || a.scores.stride_row == G * a.scores.stride_col;

  // Enough chunks (groups of `splits` sibling blocks) to fill the GPU; more
  // only when a block would otherwise see over kMaxElementsPerBlock elements.
  const int64_t needed = (total + kThreads - 1) / kThreads;
  const int64_t resident = static_cast<int64_t>(cuda_detail::sm_count()) * (shared ? 3 : 8);
  int64_t chunks = std::min<int64_t>(needed, std::max<int64_t>(1, resident / splits));
  chunks = std::max(chunks, (total + kMaxElementsPerBlock - 1) / kMaxElementsPerBlock);
  chunks = std::min<int64_t>(chunks, 0x7FFFFFFF / splits);
  const int64_t blocks = chunks * splits;

  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
    if (shared) {
      auto kernel = linear ? key_histogram_kernel<D, true, true> : key_histogram_kernel<D, true, false>;
      cuda_detail::allow_dynamic_smem(kernel, hist_bytes);
      kernel<<<grid, block, hist_bytes, stream>>>(a, total, span, splits);
    } else {
      auto kernel = linear ? key_histogram_kernel<D, false, true> : key_histogram_kernel<D, false, false>;
      kernel<<<grid, block, 0, stream>>>(a, total, span, splits);
    }
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace qme
