"""Order-preserving integer keys of scores, bit-identical to csrc/include/qme/common.h.

The metric kernels compare and histogram keys instead of floats so that every
order statistic is an exact integer computation. Total order:
NaN < -inf < ... < -0.0 == +0.0 < ... < +inf. float16/bfloat16/float32 scores use
32-bit keys of the exactly widened float32 value; float64 uses 64-bit keys.
"""
from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1


def key_bits_of(dtype_is_float64: bool) -> int:
    return 64 if dtype_is_float64 else 32


def keys32(values: np.ndarray) -> np.ndarray:
    """(N,) float32-representable values -> (N,) uint64 holding 32-bit keys."""
    v = np.asarray(values, dtype=np.float32).copy()
    v[v == 0] = 0.0  # -0.0 ties with +0.0
    u = v.view(np.uint32).astype(np.uint64)
    neg = (u & 0x80000000) != 0
    k = np.where(neg, (~u) & 0xFFFFFFFF, u | 0x80000000)
    k[np.isnan(v)] = 0
    return k.astype(np.uint64)


def keys64(values: np.ndarray) -> np.ndarray:
    """(N,) float64 values -> (N,) uint64 keys."""
    v = np.asarray(values, dtype=np.float64).copy()
    v[v == 0] = 0.0
    u = v.view(np.uint64)
    neg = (u & np.uint64(0x8000000000000000)) != 0
    k = np.where(neg, ~u, u | np.uint64(0x8000000000000000))
    k[np.isnan(v)] = 0
    return k.astype(np.uint64)


def keys(values: np.ndarray, bits: int) -> np.ndarray:
    return keys64(values) if bits == 64 else keys32(values)


def value_of_key(key: int, bits: int) -> float:
    """Inverse of the key transform for one key (key 0 -> NaN), as a Python float."""
    key = int(key) & MASK64
    if key == 0:
        return float("nan")
    if bits == 64:
        top = 1 << 63
        u = (key & (top - 1)) if key & top else (~key & MASK64)
        return float(np.array([u], dtype=np.uint64).view(np.float64)[0])
    top = 1 << 31
    u = (key & (top - 1)) if key & top else (~key & 0xFFFFFFFF)
    return float(np.array([u], dtype=np.uint32).view(np.float32)[0])


def values_of_keys(keys_: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of the key transform for an array of keys (key 0 -> NaN), float64; equal
    to :func:`value_of_key` key by key."""
    k = np.asarray(keys_, dtype=np.uint64)
    if bits == 64:
        top = np.uint64(1 << 63)
        u = np.where(k & top, k & ~top, ~k)
        out = u.view(np.float64).copy()
    else:
        k32 = (k & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        top = np.uint32(1 << 31)
        u = np.where(k32 & top, k32 & ~top, ~k32).astype(np.uint32)
        out = u.view(np.float32).astype(np.float64)
    out[k == 0] = np.nan
    return out


def to_signed64(u: int) -> int:
    """uint64 bit pattern -> the int64 with the same bits (for int64 tensors)."""
    u &= MASK64
    return u - (1 << 64) if u >= (1 << 63) else u


def to_unsigned64(s: int) -> int:
    return int(s) & MASK64
