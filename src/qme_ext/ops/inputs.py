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
from .ids import beyond_int64, describe_beyond

_NUMPY_SCORE_DTYPES = (np.float16, np.float32, np.float64)


def is_array(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def as_score_matrix(x, name: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """(P, G) float16/bfloat16/float32/float64 array or tensor -> tensor (no copy when possible).

    A tensor that requires grad is detached (metrics are not differentiable); ``device``
    (None: where ``x`` is) is checked by :func:`check_target_device`.
    """
    device = check_target_device(device)
    if isinstance(x, torch.Tensor):
        t = x.detach()
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


def check_target_device(device, name: str = "device") -> Optional[torch.device]:
    """``device`` (None, a string or a torch.device) as a torch.device, or a ValueError naming
    ``name``: unparsable, not cpu/cuda, or CUDA that this torch or machine does not have
    (torch itself would raise an AssertionError on the copy)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {str(device)!r} requested but CUDA is not available "
                             f"(torch {torch.__version__}, "
                             f"{'built without CUDA' if torch.version.cuda is None else 'no GPU visible'})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {str(device)!r} requested but this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: unsupported device {dev}; expected cpu or cuda")
    return dev


def require_finite_score(t: torch.Tensor, name: str, entries: int = 1 << 16) -> None:
    """ValueError naming ``name`` when the (P, N) scores ``t`` hold no finite entry (all NaN
    or +-inf): every metric of such a matrix would be a number decided by the NaN rule
    alone (e.g. TAR 100% at every FAR), not by the scores. Checked about ``entries`` at a
    time (whole rows) and stopping at the first finite entry: usually one small block is
    read, never a (P, N) temporary."""
    rows = max(1, entries // max(1, int(t.shape[1]) if t.dim() > 1 else 1))
    for r in range(0, t.shape[0], rows):
        if bool(torch.isfinite(t[r:r + rows]).any()):
            return
    raise ValueError(no_finite_message(name, tuple(t.shape)))


def no_finite_message(name: str, shape: tuple) -> str:
    """The error text of a (rows, cols) matrix ``name`` without a finite entry."""
    return (f"{name}: no finite score (all {shape[0]} x {shape[1]} entries are NaN or +-inf); "
            "nothing can be measured")


def check_seed(seed, name: str = "seed") -> int:
    """An integer seed in [0, 2**32 - 1] (numpy's legacy ``random.seed``, which the
    qme protocol's splits use), else a ValueError naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer in [0, 2**32 - 1], got {seed!r}")
    if not 0 <= int(seed) <= 2 ** 32 - 1:
        raise ValueError(f"{name}: expected an integer in [0, 2**32 - 1], got {int(seed)}")
    return int(seed)


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
        if t.dtype == getattr(torch, "uint64", None):  # comparisons need numpy's uint64
            arr = t.cpu().numpy()
            bad = beyond_int64(arr)
            if bad is not None:
                raise ValueError(f"{name}: {describe_beyond(arr, bad)}")
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)
                                       or np.issubdtype(arr.dtype, np.floating)
                                       or arr.dtype == np.bool_):
            raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype}")
        bad = beyond_int64(arr) if arr.dtype.kind == "u" else None
        if bad is not None:
            raise ValueError(f"{name}: {describe_beyond(arr, bad)}")
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
        wide = t.to(torch.float64)
        out = (wide >= 2.0 ** 63) | (wide < -2.0 ** 63)
        if bool(out.any()):
            raise ValueError(f"{name}: {describe_beyond(wide.cpu().numpy(), int(out.nonzero()[0, 0]))}")
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
