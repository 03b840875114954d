// CUDA twin of openset_stats (openset_stats_cpu.cpp): one thread block per
// probe row. Splits are handled kSplitChunk at a time so the per-split running
// max / count stay in registers; the block then reduces them with integer max
// and sum only, so the result is independent of the reduction order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda_check.cuh"
#include "qme/ops_cuda.h"

namespace qme {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kSplitChunk = 8;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

template <DType D>
__global__ void __launch_bounds__(kThreads) openset_stats_kernel(OpensetStatsArgs a) {
  using T = ScoreTraits<D>;
  using S = typename T::Storage;
  using K = typename T::Key;
  __shared__ K s_best[kSplitChunk][kWarps];
  __shared__ unsigned long long s_ge[kSplitChunk][kWarps];
  __shared__ unsigned s_seen[kWarps];
  unsigned long long nan_n = 0, pinf_n = 0, ninf_n = 0;  // this thread's entries, split chunk 0

  const S* base = static_cast<const S*>(a.scores.data);
  const int64_t P = a.scores.rows, C = a.scores.cols;
  const int64_t sr = a.scores.stride_row, sc = a.scores.stride_col;
  const int NS = a.num_splits;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31, warp = tid >> 5;
  // Bit patterns the CPU twin produces: float_from_key(0) widened on the host
  // is the default quiet NaN; the device's f32->f64 conversion need not keep it.
  const double kNaN = __longlong_as_double(0x7FF8000000000000ll);
  const double kNegInf = __longlong_as_double(static_cast<long long>(0xFFF0000000000000ull));

  for (int64_t p = blockIdx.x; p < P; p += gridDim.x) {
    const S* row = base + p * sr;
    const int64_t gc = a.genuine_col[p];
    if (gc >= C) {
      // The CPU twin rejects this before running; the device cannot throw, so
      // the row is poisoned (NaN, -1) where the caller did not validate.
      for (int s = tid; s < NS; s += kThreads) {
        a.max_other[static_cast<int64_t>(s) * P + p] = kNaN;
        a.num_ge[static_cast<int64_t>(s) * P + p] = -1;
      }
      continue;
    }
    const bool mated = gc >= 0;
    const K gk = mated ? T::key(row[gc * sc]) : K(0);

    for (int s0 = 0; s0 < NS; s0 += kSplitChunk) {
      // best starts at key 0, the lowest key, so max() equals the CPU's
      // "first seen or larger" update; `seen` tracks whether any column counted.
      K best[kSplitChunk];
      unsigned long long ge[kSplitChunk];
      unsigned seen = 0;
#pragma unroll
      for (int u = 0; u < kSplitChunk; ++u) { best[u] = 0; ge[u] = 0; }

      for (int64_t c = tid; c < C; c += kThreads) {
        const K k = T::key(row[c * sc]);
        if (s0 == 0) {
          nan_n += k == 0;
          pinf_n += k == kPosInfKey<K>;
          ninf_n += k == kNegInfKey<K>;
        }
        if (c == gc) continue;
        const bool above = mated && k >= gk;
#pragma unroll
        for (int u = 0; u < kSplitChunk; ++u) {
          const int s = s0 + u;
          if (s >= NS || !a.enrolled[static_cast<int64_t>(s) * C + c]) continue;
          best[u] = k > best[u] ? k : best[u];
          seen |= 1u << u;
          ge[u] += above ? 1ull : 0ull;
        }
      }

#pragma unroll
      for (int u = 0; u < kSplitChunk; ++u) {
        for (int o = 16; o > 0; o >>= 1) {
          const K b = __shfl_xor_sync(kFullMask, best[u], o);
          best[u] = b > best[u] ? b : best[u];
          ge[u] += __shfl_xor_sync(kFullMask, ge[u], o);
        }
      }
      for (int o = 16; o > 0; o >>= 1) seen |= __shfl_xor_sync(kFullMask, seen, o);
      if (lane == 0) {
#pragma unroll
        for (int u = 0; u < kSplitChunk; ++u) { s_best[u][warp] = best[u]; s_ge[u][warp] = ge[u]; }
        s_seen[warp] = seen;
      }
      __syncthreads();
      if (tid < kSplitChunk && s0 + tid < NS) {
        const int u = tid, s = s0 + tid;
        K b = 0;
        unsigned long long g = 0;
        unsigned any = 0;
        for (int w = 0; w < kWarps; ++w) {
          b = s_best[u][w] > b ? s_best[u][w] : b;
          g += s_ge[u][w];
          any |= s_seen[w];
        }
        double v = kNegInf;
        if (any & (1u << u)) {
          if (b == 0) v = kNaN;
          else if constexpr (sizeof(K) == 8) v = double_from_key(b);
          else v = static_cast<double>(float_from_key(b));
        }
        a.max_other[static_cast<int64_t>(s) * P + p] = v;
        a.num_ge[static_cast<int64_t>(s) * P + p] = static_cast<int64_t>(g);
      }
      __syncthreads();  // s_best / s_ge are rewritten by the next chunk
    }
  }
  // Integer sums: the totals do not depend on the order of the atomics.
  for (int o = 16; o > 0; o >>= 1) {
    nan_n += __shfl_xor_sync(kFullMask, nan_n, o);
    pinf_n += __shfl_xor_sync(kFullMask, pinf_n, o);
    ninf_n += __shfl_xor_sync(kFullMask, ninf_n, o);
  }
  if (lane == 0 && (nan_n | pinf_n | ninf_n)) {
    auto* out = reinterpret_cast<unsigned long long*>(a.nonfinite);
    atomicAdd(out, nan_n);
    atomicAdd(out + 1, pinf_n);
    atomicAdd(out + 2, ninf_n);
  }
}

void check_args(const OpensetStatsArgs& a) {
  check_matrix(a.scores, "merge_scores");
  if (a.num_splits < 1) throw InvalidArgument("splits: at least one split is required");
}

}  // namespace

size_t openset_stats_cuda_workspace(const OpensetStatsArgs& args) {
  check_args(args);
  return 0;
}

void openset_stats_cuda(const OpensetStatsArgs& a, void* /*workspace*/, size_t /*workspace_bytes*/,
                        cudaStream_t stream) {
  check_args(a);
  const int64_t P = a.scores.rows;
  if (P == 0) return;
  if (a.genuine_col == nullptr || a.max_other == nullptr || a.num_ge == nullptr ||
      a.nonfinite == nullptr ||
      (a.scores.cols > 0 && a.enrolled == nullptr))
    throw InvalidArgument("openset_stats: null input or output buffer");
  // genuine_col lives on the device: checking it here would need a copy and a
  // sync, so out-of-range entries are flagged in the output instead.
  const int64_t blocks = std::min<int64_t>(P, int64_t{1} << 20);
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    openset_stats_kernel<D><<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream>>>(a);
    QME_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace qme
