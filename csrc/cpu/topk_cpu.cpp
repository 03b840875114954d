// CPU twin of topk (qme/topk.h): per row, the k best entries in the exact order
// of the package (selection keys of common.h, ties by lower index, NaN last).
//
// The P x G elements, flattened row by row, are cut into one contiguous range per
// thread, so one huge row (P = 1, G = 10^7) is shared by all threads as well as
// many small rows are. Each range is scanned row segment by row segment, 64
// keys at a time (vectorised), with a threshold filter: candidates go to a
// buffer that is cut back to its k best (nth_element) once it holds 2k + 64, and
// the k-th best key becomes the bar an element must strictly beat to be
// buffered; an element that only ties the bar comes later in the row, so it
// loses the tie. On typical data most blocks of 64 hold no element above the
// bar and cost one vector pass over their keys. A row inside one range is
// finished in place; a row cut by range boundaries is finished by merging the
// local top-k of its segments. The order is total, so results do not depend on
// the number of threads.
#include <algorithm>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "qme/ops.h"
#include "qme/topk.h"

namespace qme {

void check_topk_args(const TopkArgs& a) {
  check_matrix(a.scores, "scores");
  if (a.k < 1 || a.k > kTopkMaxK)
    throw InvalidArgument("k: expected 1 <= k <= " + std::to_string(kTopkMaxK) + ", got " +
                          std::to_string(a.k));
  if (a.k > a.scores.cols)
    throw InvalidArgument("k: expected k <= G = " + std::to_string(a.scores.cols) +
                          " gallery columns, got " + std::to_string(a.k));
}

namespace {

// Candidate representations; `Better` is the package order (key descending,
// then lower column), a strict total order because columns are unique.
// Packed: a 32-bit key and the inverted column in one uint64, so selecting and
// sorting compare plain integers (columns < 2^32).
struct PackedCand {
  using Item = uint64_t;
  using Key = uint32_t;
  static Item make(uint32_t key, int64_t col) {
    return (uint64_t{key} << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(col));
  }
  static Key key(Item c) { return static_cast<Key>(c >> 32); }
  static int64_t col(Item c) { return static_cast<uint32_t>(~static_cast<uint32_t>(c)); }
  using Better = std::greater<Item>;
};

// Pair: any key width and any column (float64 keys, or G > 2^32).
template <typename K>
struct PairCand {
  struct Item {
    K key;        // selection key: higher is better
    int64_t col;  // gallery column
  };
  using Key = K;
  static Item make(K key, int64_t col) { return {key, col}; }
  static Key key(const Item& c) { return c.key; }
  static int64_t col(const Item& c) { return c.col; }
  struct Better {
    bool operator()(const Item& a, const Item& b) const {
      return a.key > b.key || (a.key == b.key && a.col < b.col);
    }
  };
};

// Order-preserving keys in the form GCC vectorises (no early returns): the same
// order as key_from_float / key_from_double of common.h on the widened value,
// NaN = 0, -0.0 == +0.0 (tests/test_topk.py checks every dtype against the
// reference built on those keys). Only the order matters here: the outputs are
// the stored scores, so float16 orders its 16-bit patterns directly instead of
// widening them first.
template <typename U>
inline U ordered_bits(U u, U nan_above) {
  constexpr U kSign = U(1) << (sizeof(U) * 8 - 1);
  const bool nan = (u & ~kSign) > nan_above;
  u = u == kSign ? U(0) : u;  // -0.0 -> +0.0
  const U k = (u & kSign) ? U(~u) : U(u | kSign);
  return nan ? U(0) : k;
}

template <DType D, bool kLargest>
inline typename ScoreTraits<D>::Key fast_select_key(typename ScoreTraits<D>::Storage v) {
  using K = typename ScoreTraits<D>::Key;
  K key;
  if constexpr (D == DType::kFloat32) key = ordered_bits<uint32_t>(bits_of_float(v), 0x7F800000u);
  else if constexpr (D == DType::kFloat64)
    key = ordered_bits<uint64_t>(bits_of_double(v), 0x7FF0000000000000ull);
  else if constexpr (D == DType::kBFloat16)
    key = ordered_bits<uint32_t>(static_cast<uint32_t>(v) << 16, 0x7F800000u);
  else key = ordered_bits<uint16_t>(v, 0x7C00u);  // float16
  return topk_select_key<K>(key, kLargest);
}

// Keeps the k best of the elements fed to it, in no particular order.
template <DType D, bool kLargest, typename C>
class SegmentTopk {
 public:
  using S = typename ScoreTraits<D>::Storage;
  using K = typename ScoreTraits<D>::Key;
  using Item = typename C::Item;
  static constexpr int kBlock = 64;

  // A block is appended whole before the size check, hence the kBlock spare slots.
  explicit SegmentTopk(int64_t k)
      : k_(static_cast<size_t>(k)), cap_(2 * k_ + 64), buf_(cap_ + kBlock) {}

  void reset() {
    n_ = 0;
    filtering_ = false;
    bar_ = 0;
  }

  // Columns [c0, c1) of one row; `row` points at column 0.
  void scan(const S* row, int64_t sc, int64_t c0, int64_t c1) {
    K sk[kBlock];
    for (int64_t j0 = c0; j0 < c1; j0 += kBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kBlock, c1 - j0));
      const bool any = keys_block(row, sc, j0, n, bar_, sk);
      if (filtering_ && !any) continue;  // the common case once the bar is up
      Item* out = buf_.data() + n_;
      size_t m = 0;
      if (filtering_) {
        for (int i = 0; i < n; ++i) {  // branch-free: write always, keep if it beats the bar
          out[m] = C::make(sk[i], j0 + i);
          m += sk[i] > bar_;
        }
      } else {
        for (int i = 0; i < n; ++i) out[i] = C::make(sk[i], j0 + i);
        m = static_cast<size_t>(n);
      }
      n_ += m;
      if (n_ >= cap_) shrink();
    }
  }

  // The k best found so far (fewer if fewer were fed), unordered: [data(), data() + size()).
  Item* data() {
    if (n_ > k_) shrink();
    return buf_.data();
  }
  size_t size() const { return std::min(n_, k_); }

 private:
  // Selection keys of n elements into sk; true when one beats `bar`. Two loops
  // so that the contiguous one vectorises.
  static bool keys_block(const S* row, int64_t sc, int64_t j0, int n, K bar, K* sk) {
    int any = 0;
    if (sc == 1) {
      const S* p = row + j0;
      for (int i = 0; i < n; ++i) {
        sk[i] = fast_select_key<D, kLargest>(p[i]);
        any |= sk[i] > bar;
      }
    } else {
      for (int i = 0; i < n; ++i) {
        sk[i] = fast_select_key<D, kLargest>(row[(j0 + i) * sc]);
        any |= sk[i] > bar;
      }
    }
    return any != 0;
  }

  void shrink() {
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.begin() + n_,
                     typename C::Better());
    n_ = k_;
    bar_ = C::key(buf_[k_ - 1]);
    filtering_ = true;
  }

  size_t k_, cap_;
  std::vector<Item> buf_;
  size_t n_ = 0;
  bool filtering_ = false;
  K bar_ = 0;
};

// Sorts the k best of the n candidates at `cands` best first and writes row `r`.
template <DType D, typename C>
void write_row(const TopkArgs& a, int64_t r, typename C::Item* cands, size_t n) {
  using S = typename ScoreTraits<D>::Storage;
  const size_t k = static_cast<size_t>(a.k);
  if (n > k) std::nth_element(cands, cands + (k - 1), cands + n, typename C::Better());
  std::sort(cands, cands + k, typename C::Better());
  const S* row = static_cast<const S*>(a.scores.data) + r * a.scores.stride_row;
  S* vals = static_cast<S*>(a.values) + r * a.k;
  int64_t* idx = a.indices + r * a.k;
  for (size_t j = 0; j < k; ++j) {
    idx[j] = C::col(cands[j]);
    vals[j] = row[idx[j] * a.scores.stride_col];
  }
}

template <DType D, bool kLargest, typename C>
void topk_typed(const TopkArgs& a, int num_threads) {
  using Seg = SegmentTopk<D, kLargest, C>;
  using Item = typename C::Item;
  using S = typename Seg::S;
  const int64_t P = a.scores.rows, G = a.scores.cols;
  const int64_t n = P * G;
  // Below ~64K elements per thread the thread start costs more than it saves.
  constexpr int64_t kMinPerThread = int64_t{1} << 16;
  const int nt = parallel_blocks(n, num_threads, kMinPerThread);
  struct Partial {
    int64_t row;
    std::vector<Item> cands;
  };
  std::vector<std::vector<Partial>> partials(nt);
  const S* base = static_cast<const S*>(a.scores.data);
  parallel_for_blocks(n, nt, kMinPerThread, [&](int t, int64_t b, int64_t e) {
    Seg seg(a.k);
    for (int64_t r = b / G; r * G < e; ++r) {
      const int64_t c0 = std::max<int64_t>(b - r * G, 0), c1 = std::min<int64_t>(e - r * G, G);
      seg.reset();
      seg.scan(base + r * a.scores.stride_row, a.scores.stride_col, c0, c1);
      Item* found = seg.data();
      if (c0 == 0 && c1 == G) write_row<D, C>(a, r, found, seg.size());
      else partials[t].push_back({r, std::vector<Item>(found, found + seg.size())});
    }
  });
  // Rows cut between threads: at most two per thread, merged in range order.
  std::vector<Item> merged;
  for (int t = 0; t < nt; ++t) {
    for (const Partial& part : partials[t]) {
      merged.insert(merged.end(), part.cands.begin(), part.cands.end());
      const bool last_piece = (t + 1 == nt || partials[t + 1].empty() ||
                               partials[t + 1].front().row != part.row);
      if (&part == &partials[t].back() && !last_piece) continue;  // row goes on in range t + 1
      write_row<D, C>(a, part.row, merged.data(), merged.size());
      merged.clear();
    }
  }
}

}  // namespace

void topk_cpu(const TopkArgs& a, int num_threads) {
  check_topk_args(a);
  if (a.scores.rows == 0) return;
  if (a.values == nullptr || a.indices == nullptr) throw InvalidArgument("topk: null output buffer");
  dispatch_dtype(a.scores.dtype, [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using K = typename ScoreTraits<D>::Key;
    constexpr bool kNarrow = sizeof(K) == 4;
    using C = std::conditional_t<kNarrow, PackedCand, PairCand<K>>;
    if (kNarrow && a.scores.cols > (int64_t{1} << 32)) {
      // Columns beyond 32 bits do not fit the packed form.
      if (a.largest) topk_typed<D, true, PairCand<K>>(a, num_threads);
      else topk_typed<D, false, PairCand<K>>(a, num_threads);
    } else if (a.largest) {
      topk_typed<D, true, C>(a, num_threads);
    } else {
      topk_typed<D, false, C>(a, num_threads);
    }
    return 0;
  });
}

}  // namespace qme
