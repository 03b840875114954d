// CPU twin of expert_fuse_bwd. Each entry recomputes its hidden activations and
// dropout mask exactly as the forward did (same Context arithmetic), then pushes
// grad_F back through the gate, the second Linear, SELU, the first Linear and the
// folded BatchNorm affine.
//
// Determinism: the (B, G) entries are cut into work items whose shape depends only
// on (B, G), never on the thread count. Each item sums its parameter gradients in
// double into its own slot; the slots are then added in item order. The gate
// gradient of a row is either owned by one item (whole rows per item) or summed
// over the row's column tiles in tile order.
#include <algorithm>
#include <vector>

#include "parallel.h"
#include "qme/expert_fuse.h"

namespace qme {
namespace {

struct Tiling {
  int64_t rows_per_item;  // R
  int64_t tile_cols;      // TG
  int64_t tiles;          // nT column tiles per row group
  int64_t items;          // ceil(B / R) * nT
};

// About 1k items at most, and at least 4k entries each so that the per-item
// partial slots stay small next to the work they summarise.
Tiling make_tiling(int64_t B, int64_t G) {
  const int64_t n = B * G;
  const int64_t target = std::max<int64_t>(4096, (n + 1023) / 1024);
  Tiling t{};
  if (G >= target) {
    t.rows_per_item = 1;
    t.tile_cols = target;
    t.tiles = (G + target - 1) / target;
  } else {
    t.rows_per_item = std::max<int64_t>(1, target / std::max<int64_t>(1, G));
    t.tile_cols = G;
    t.tiles = 1;
  }
  t.items = (B + t.rows_per_item - 1) / t.rows_per_item * t.tiles;
  return t;
}

// Sum of a chunk: 8 interleaved lanes (vectorisable, fixed order), then the
// lanes in order, in double.
template <typename T>
inline double chunk_sum(const T* v) {  // v: (kChunk,)
  T lanes[8] = {};
  for (int i0 = 0; i0 < cpu_expert::kChunk; i0 += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += v[i0 + l];
  double s = 0.0;
  for (int l = 0; l < 8; ++l) s += static_cast<double>(lanes[l]);
  return s;
}

template <DType D, typename T>
QME_CPU_VECTOR_CLONES void backward_item(const ExpertFuseBwdArgs& a, const cpu_expert::Context<D, T>& ctx,
                   const Tiling& tl, int64_t item,
                   double* part,        // (Z * per_expert,) this item's parameter gradients
                   double* gate_part) { // (B * nT, Z) per (row, tile) gate gradients
  using cpu_expert::kChunk;
  const int64_t K = ctx.K, H = ctx.H, Z = ctx.Z, G = ctx.G;
  const int64_t per = expert::param_grads_per_expert(K, H);
  const T* gF = static_cast<const T*>(a.grad_fused);
  T* gx_out = static_cast<T*>(a.grad_x);
  T* gg_out = static_cast<T*>(a.grad_gate);
  const int64_t rg = item / tl.tiles, tile = item % tl.tiles;
  const int64_t r0 = rg * tl.rows_per_item, r1 = std::min(ctx.B, r0 + tl.rows_per_item);
  const int64_t g_begin = tile * tl.tile_cols, g_end = std::min(G, g_begin + tl.tile_cols);
  std::fill(part, part + Z * per, 0.0);

  alignas(64) T xs[kExpertMaxChannels][kChunk], xc[kExpertMaxChannels][kChunk],
      y[kExpertMaxChannels][kChunk],
      dy[kExpertMaxChannels][kChunk], gx[kExpertMaxChannels][kChunk];
  alignas(64) T go[kChunk], dE[kChunk], pre[kChunk], s[kChunk], ds[kChunk], m[kChunk],
      ez[kChunk], act[kChunk], dpre[kChunk], tmp[kChunk];
  std::vector<double> row_gate(static_cast<size_t>(Z));
  for (int i = 0; i < kChunk; ++i) m[i] = T(1);
  for (int64_t b = r0; b < r1; ++b) {
    std::fill(row_gate.begin(), row_gate.end(), 0.0);
    for (int64_t g0 = g_begin; g0 < g_end; g0 += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, g_end - g0);
      ctx.load_chunk(b, g0, n, xs);
      // Padding entries get grad 0, so every contribution of theirs is exactly 0.
      for (int64_t i = 0; i < kChunk; ++i) go[i] = i < n ? gF[b * G + g0 + i] : T(0);
      for (int64_t k = 0; k < K; ++k)
        for (int i = 0; i < kChunk; ++i) gx[k][i] = T(0);
      for (int64_t z = 0; z < Z; ++z) {
        double* pz = part + z * per;
        double* p_a = pz;
        double* p_c = pz + K;
        double* p_w1 = pz + 2 * K;
        double* p_b1 = p_w1 + H * K;
        double* p_w2 = p_b1 + H;
        double* p_b2 = p_w2 + H;
        const T* az = ctx.a + z * K;
        const T gz = ctx.gate[b * Z + z];
        for (int i = 0; i < kChunk; ++i) dE[i] = go[i] * gz;
        for (int64_t k = 0; k < K; ++k) {
          const auto f = expert::centred_affine(az[k], ctx.c[z * K + k]);
          for (int i = 0; i < kChunk; ++i) {
            xc[k][i] = xs[k][i] - f.m;
            y[k][i] = f.a * xc[k][i] + f.r;
            dy[k][i] = T(0);
          }
        }
        const T bz = ctx.b2[z];
        for (int i = 0; i < kChunk; ++i) ez[i] = bz;
        for (int64_t h = 0; h < H; ++h) {
          const T* w = ctx.w1 + (z * H + h) * K;
          const T bias = ctx.b1[z * H + h], w2 = ctx.w2[z * H + h];
          for (int i = 0; i < kChunk; ++i) pre[i] = bias;
          for (int64_t k = 0; k < K; ++k) {
            const T wk = w[k];
            for (int i = 0; i < kChunk; ++i) pre[i] += wk * y[k][i];
          }
          cpu_expert::selu_chunk(pre, s, ds);
          if (ctx.threshold) ctx.keep_chunk(z, h, b, g0, m);
          // Same products as the forward: ez += w2 * (s * m).
          for (int i = 0; i < kChunk; ++i) {
            act[i] = s[i] * m[i];
            ez[i] += w2 * act[i];
            tmp[i] = dE[i] * act[i];
            dpre[i] = dE[i] * w2 * m[i] * ds[i];
          }
          p_w2[h] += chunk_sum(tmp);
          p_b1[h] += chunk_sum(dpre);
          for (int64_t k = 0; k < K; ++k) {
            const T wk = w[k];
            for (int i = 0; i < kChunk; ++i) {
              tmp[i] = dpre[i] * y[k][i];
              dy[k][i] += dpre[i] * wk;
            }
            p_w1[h * K + k] += chunk_sum(tmp);
          }
        }
        for (int i = 0; i < kChunk; ++i) tmp[i] = go[i] * ez[i];
        row_gate[z] += chunk_sum(tmp);
        p_b2[0] += chunk_sum(dE);
        for (int64_t k = 0; k < K; ++k) {
          const T ak = az[k];
          for (int i = 0; i < kChunk; ++i) {
            tmp[i] = dy[k][i] * xc[k][i];  // centred: m * sum dy is added at the end
            gx[k][i] += dy[k][i] * ak;
          }
          p_a[k] += chunk_sum(tmp);
          p_c[k] += chunk_sum(dy[k]);
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        T* o = gx_out + (b * K + k) * G + g0;
        for (int64_t i = 0; i < n; ++i) o[i] = gx[k][i];
      }
    }
    if (tl.tiles == 1) {
      // This item owns the whole row.
      for (int64_t z = 0; z < Z; ++z) gg_out[b * Z + z] = static_cast<T>(row_gate[z]);
    } else {
      for (int64_t z = 0; z < Z; ++z) gate_part[(b * tl.tiles + tile) * Z + z] = row_gate[z];
    }
  }
}

template <DType D, typename T>
void run_backward(const ExpertFuseBwdArgs& a, int num_threads) {
  const cpu_expert::Context<D, T> ctx(a.x, a.params);
  const int64_t K = ctx.K, H = ctx.H, Z = ctx.Z, B = ctx.B, G = ctx.G;
  const int64_t per = expert::param_grads_per_expert(K, H);
  const Tiling tl = make_tiling(B, G);
  std::vector<double> parts(static_cast<size_t>(tl.items * Z * per));
  std::vector<double> gate_parts(tl.tiles > 1 ? static_cast<size_t>(B * tl.tiles * Z) : 0);
  parallel_for_blocks(tl.items, num_threads, 1, [&](int, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      backward_item<D, T>(a, ctx, tl, i, parts.data() + i * Z * per, gate_parts.data());
  });

  // Fixed-order combination of the item slots.
  std::vector<double> total(static_cast<size_t>(Z * per), 0.0);
  for (int64_t i = 0; i < tl.items; ++i) {
    const double* p = parts.data() + i * Z * per;
    for (int64_t j = 0; j < Z * per; ++j) total[j] += p[j];
  }
  T* ga = static_cast<T*>(a.grad_a);
  T* gc = static_cast<T*>(a.grad_c);
  T* gw1 = static_cast<T*>(a.grad_w1);
  T* gb1 = static_cast<T*>(a.grad_b1);
  T* gw2 = static_cast<T*>(a.grad_w2);
  T* gb2 = static_cast<T*>(a.grad_b2);
  for (int64_t z = 0; z < Z; ++z) {
    const double* t = total.data() + z * per;
    for (int64_t k = 0; k < K; ++k) {
      // dL/da = sum dy * (x - m) + m * sum dy (see centred_affine)
      const T m = expert::centred_affine(ctx.a[z * K + k], ctx.c[z * K + k]).m;
      ga[z * K + k] = static_cast<T>(t[k] + static_cast<double>(m) * t[K + k]);
      gc[z * K + k] = static_cast<T>(t[K + k]);
    }
    for (int64_t j = 0; j < H * K; ++j) gw1[z * H * K + j] = static_cast<T>(t[2 * K + j]);
    for (int64_t h = 0; h < H; ++h) {
      gb1[z * H + h] = static_cast<T>(t[2 * K + H * K + h]);
      gw2[z * H + h] = static_cast<T>(t[2 * K + H * K + H + h]);
    }
    gb2[z] = static_cast<T>(t[2 * K + H * K + 2 * H]);
  }
  if (tl.tiles > 1) {
    T* gg = static_cast<T*>(a.grad_gate);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t z = 0; z < Z; ++z) {
        double s = 0.0;
        for (int64_t t = 0; t < tl.tiles; ++t) s += gate_parts[(b * tl.tiles + t) * Z + z];
        gg[b * Z + z] = static_cast<T>(s);
      }
  }
}

}  // namespace

void expert_fuse_bwd_cpu(const ExpertFuseBwdArgs& a, int num_threads) {
  check_expert_args(a.x, a.params);
  if (a.grad_a == nullptr || a.grad_c == nullptr || a.grad_w1 == nullptr ||
      a.grad_b1 == nullptr || a.grad_w2 == nullptr || a.grad_b2 == nullptr)
    throw InvalidArgument("expert_fuse_bwd: null parameter-gradient pointer");
  const int64_t n = a.x.batch * a.x.cols;
  if (n > 0 && (a.grad_fused == nullptr || a.grad_x == nullptr || a.grad_gate == nullptr))
    throw InvalidArgument("expert_fuse_bwd: null pointer for a non-empty problem");
  dispatch_dtype(a.x.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using T = cpu_expert::ComputeT<D>;
    run_backward<D, T>(a, num_threads);  // n == 0 still writes zero parameter gradients
    return 0;
  });
}

}  // namespace qme
