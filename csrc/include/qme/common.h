// Shared definitions for the qme_ext kernels: dtypes, strided matrix views and the
// order-preserving score keys that every metric kernel compares and histograms.
// Nothing here knows about Python or torch.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#define QME_HD __host__ __device__ __forceinline__
#else
#define QME_HD inline
#endif

namespace qme {

// Score element types accepted by every kernel. Values match DTYPE_CODES in src/qme_ext/ops/common.py.
enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

// A read-only strided 2-D view; strides are in elements, not bytes, and may be
// any non-negative value (transposed and sliced inputs are read in place).
struct MatrixView {
  const void* data;  // (rows, cols) scores of `dtype`
  DType dtype;
  int64_t rows;
  int64_t cols;
  int64_t stride_row;
  int64_t stride_col;
};

// Errors raised by the kernel layer; the bindings turn them into ValueError.
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// ---- bit casts (host: memcpy, device: intrinsics) ----------------------------
QME_HD uint32_t bits_of_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

QME_HD float float_of_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

QME_HD uint64_t bits_of_double(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
#endif
}

QME_HD double double_of_bits(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, 8);
  return d;
#endif
}

// ---- half / bfloat16 decoding (exact; no dependency on cuda_fp16) ----------
QME_HD float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  return float_of_bits(u);
}

QME_HD float fp16_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t u;
  if (exp == 0x1Fu) {
    u = sign | 0x7F800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;  // signed zero
  } else {
    // subnormal half: renormalise into a float32 normal
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
    u = sign | (static_cast<uint32_t>(112 - e) << 23) | ((man & 0x3FFu) << 13);
  }
  return float_of_bits(u);
}

// ---- order-preserving keys ------------------------------------------------
// key(a) < key(b)  <=>  a sorts below b, with the package's total order:
//   NaN  <  -inf  < ... < -0.0 == +0.0 < ... < +inf.
// NaN maps to key 0 (the very bottom: NumPy sorts NaN last in descending order),
// -0.0 is folded onto +0.0 (they compare equal in NumPy, so they tie).
// Float32/float16/bfloat16 use 32-bit keys of the exactly-widened float32 value;
// float64 uses 64-bit keys. src/qme_ext/ops/keys.py mirrors this bit for bit.
QME_HD uint32_t key_from_float(float f) {
  uint32_t u = bits_of_float(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0u;  // NaN
  if (u == 0x80000000u) u = 0u;                     // -0.0 -> +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

QME_HD uint64_t key_from_double(double d) {
  uint64_t u = bits_of_double(d);
  if ((u & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull) return 0ull;  // NaN
  if (u == 0x8000000000000000ull) u = 0ull;
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Keys of +inf and -inf (NaN is key 0), for counting non-finite entries in a pass.
template <typename K> constexpr K kPosInfKey = sizeof(K) == 8 ? K(0xFFF0000000000000ull) : K(0xFF800000u);
template <typename K> constexpr K kNegInfKey = sizeof(K) == 8 ? K(0x000FFFFFFFFFFFFFull) : K(0x007FFFFFu);

// Inverse of key_from_float / key_from_double (key 0 decodes to a NaN).
QME_HD float float_from_key(uint32_t k) {
  uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
  if (k == 0u) u = 0x7FC00000u;
  return float_of_bits(u);
}

QME_HD double double_from_key(uint64_t k) {
  uint64_t u = (k & 0x8000000000000000ull) ? (k & 0x7FFFFFFFFFFFFFFFull) : ~k;
  if (k == 0ull) u = 0x7FF8000000000000ull;
  return double_of_bits(u);
}

// Score element -> key, per storage type. KeyT is uint32_t except for float64.
template <DType D> struct ScoreTraits;
template <> struct ScoreTraits<DType::kFloat32> {
  using Storage = float; using Key = uint32_t;
  static QME_HD Key key(Storage v) { return key_from_float(v); }
  static QME_HD double value(Storage v) { return static_cast<double>(v); }
};
template <> struct ScoreTraits<DType::kFloat64> {
  using Storage = double; using Key = uint64_t;
  static QME_HD Key key(Storage v) { return key_from_double(v); }
  static QME_HD double value(Storage v) { return v; }
};
template <> struct ScoreTraits<DType::kFloat16> {
  using Storage = uint16_t; using Key = uint32_t;
  static QME_HD Key key(Storage v) { return key_from_float(fp16_bits_to_float(v)); }
  static QME_HD double value(Storage v) { return static_cast<double>(fp16_bits_to_float(v)); }
};
template <> struct ScoreTraits<DType::kBFloat16> {
  using Storage = uint16_t; using Key = uint32_t;
  static QME_HD Key key(Storage v) { return key_from_float(bf16_bits_to_float(v)); }
  static QME_HD double value(Storage v) { return static_cast<double>(bf16_bits_to_float(v)); }
};

// Number of key bits for a dtype (32 or 64).
inline int key_bits(DType d) { return d == DType::kFloat64 ? 64 : 32; }

// Calls fn(tag) with tag = std::integral_constant<DType, D>{} for the runtime dtype,
// so one generic lambda body is compiled once per score type (C++17).
template <typename Fn>
auto dispatch_dtype(DType d, Fn&& fn) {
  switch (d) {
    case DType::kFloat32: return fn(std::integral_constant<DType, DType::kFloat32>{});
    case DType::kFloat64: return fn(std::integral_constant<DType, DType::kFloat64>{});
    case DType::kFloat16: return fn(std::integral_constant<DType, DType::kFloat16>{});
    case DType::kBFloat16: return fn(std::integral_constant<DType, DType::kBFloat16>{});
  }
  throw InvalidArgument("scores: unsupported dtype code " + std::to_string(static_cast<int>(d)));
}

}  // namespace qme
