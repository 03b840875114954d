"""Boundary validation: user inputs (numpy arrays, torch tensors, lists) to tensors.

Every error names the argument and what was expected (habit 3: a bad input is a
ValueError/TypeError, never a crash or a silent NaN).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import backend as _backend
from .common import SCORE_DTYPES

_NUMPY_SCORE_DTYPES = (np.float16, np.float32, np.float64)


def is_array(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def as_score_matrix(x, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """(P, G) float16/bfloat16/float32/float64 array or tensor -> tensor (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.type not in _NUMPY_SCORE_DTYPES:
            raise TypeError(f"{name}: expected a floating-point score matrix "
                            f"(float16/float32/float64), got dtype {x.dtype}")
        if any(s < 0 for s in x.strides):
            x = np.ascontiguousarray(x)
        t = torch.from_numpy(x)
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype not in SCORE_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (probes, gallery) matrix, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: empty matrix of shape {tuple(t.shape)}; expected at least one "
                         "probe and one gallery entry")
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    check_device(t, name)
    return t


def check_device(t: torch.Tensor, name: str) -> None:
    if t.device.type == "cuda":
        if not _backend.cuda_compiled():
            raise _backend.BuildError(f"{name} is a CUDA tensor but " + _backend.CUDA_BUILD_HINT)
    elif t.device.type != "cpu":
        raise ValueError(f"{name}: unsupported device {t.device}; expected cpu or cuda")


def as_ids(x, name: str, length: int, device: torch.device) -> torch.Tensor:
    """(N,) integer ids (any int dtype, or floats holding integers) -> int64 tensor on device."""
    if x is None:
        raise ValueError(f"{name}: required")
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                       or np.issubdtype(arr.dtype, np.floating)
                                       or arr.dtype == np.bool_):
            raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 1:
        t = t.reshape(-1) if t.dim() == 2 and 1 in t.shape else t
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D vector of {length} ids, got shape {tuple(t.shape)}")
    if t.shape[0] != length:
        raise ValueError(f"{name}: expected {length} ids (one per row/column of the scores), "
                         f"got {t.shape[0]}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: ids must be finite; found NaN or inf")
        if not bool((t == torch.round(t)).all()):
            raise ValueError(f"{name}: float ids must hold integers; found a fractional value")
    elif t.dtype.is_complex:
        raise TypeError(f"{name}: expected integer ids, got {t.dtype}")
    return t.to(device=device, dtype=torch.int64).contiguous()


def as_probabilities(values, name: str) -> list[float]:
    """FAR/FPIR lists: floats in (0, 1]."""
    try:
        out = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64))]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of rates in (0, 1], got {values!r}") from None
    if not out:
        raise ValueError(f"{name}: expected at least one rate")
    for v in out:
        if not (0.0 < v <= 1.0):
            raise ValueError(f"{name}: rates must lie in (0, 1], got {v}")
    return out


def as_count(x, name: str) -> int:
    """An integer >= 1 (not a bool) as int, else a ValueError naming `name`."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {x!r}")
    return int(x)
