"""Score matrices in every dtype, container and memory layout, and bitwise comparison.

Used by the property tests (through tests/property_strategies.py, which adds the
hypothesis strategies) and by tests/test_robustness.py; nothing here needs hypothesis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TORCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NUMPY_OK = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
LAYOUTS = ("contiguous", "transposed", "strided", "negative")
# a value no score takes: a kernel that reads outside its view changes the result
SENTINEL = 7.0e3


def id_container(arr: np.ndarray, kind: str, device="cpu"):
    """The same ids as int64 / int32 / float64 numpy, a torch tensor or a list."""
    if kind == "int32":
        return arr.astype(np.int32)
    if kind == "float64":
        return arr.astype(np.float64)
    if kind == "torch":
        return torch.from_numpy(arr.copy()).to(device)
    if kind == "list":
        return arr.tolist()
    return arr


@dataclass
class Matrix:
    """A score matrix as handed to the API, and the float64 values it really holds."""

    obj: object  # numpy array or torch tensor, e.g. (P, G), possibly a strided view
    rounded: np.ndarray  # same shape, float64: the values after rounding to the dtype
    dtype: torch.dtype
    layout: str


def present(v: np.ndarray, dtype: torch.dtype, layout: str, use_numpy: bool,
            device="cpu") -> Matrix:
    """Wrap float64 values `v` (any rank) in the requested dtype, container and layout.

    transposed: a view with reversed axis order over a contiguous buffer; strided:
    every other element of a larger SENTINEL-filled buffer; negative: numpy
    negative strides (torch has none, so torch gets the strided view).
    """
    t = torch.from_numpy(np.ascontiguousarray(v)).to(dtype)
    rounded = t.to(torch.float64).numpy()
    inner = tuple(slice(1, 2 * n + 1, 2) for n in v.shape)
    big_shape = tuple(2 * n + 1 for n in v.shape)
    if use_numpy and dtype in NUMPY_OK:
        a = rounded.astype(NUMPY_OK[dtype])
        if layout == "transposed":
            obj = np.ascontiguousarray(a.T).T
        elif layout == "strided":
            big = np.full(big_shape, SENTINEL, dtype=a.dtype)
            big[inner] = a
            obj = big[inner]
        elif layout == "negative":
            flip = (slice(None, None, -1),) * a.ndim
            obj = np.ascontiguousarray(a[flip])[flip]
        else:
            obj = a
        return Matrix(obj, rounded, dtype, layout)
    t = t.to(device)
    if layout == "transposed":
        rev = tuple(range(t.dim() - 1, -1, -1))
        obj = t.permute(rev).contiguous().permute(rev)
    elif layout in ("strided", "negative"):
        big = torch.full(big_shape, SENTINEL, dtype=dtype, device=device)
        big[inner] = t
        obj = big[inner]
    else:
        obj = t
    return Matrix(obj, rounded, dtype, layout)


def snapshot(x):
    """A bitwise copy of an array/tensor (NaN payloads and -0.0 included)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    return x


def same_bits(a, b) -> bool:
    """Bitwise equality of two arrays/tensors (dtype, shape, strides' values, bytes)."""
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))
        return bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and \
            np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    return a == b
