"""Reference top-k retrieval: a literal stable sort of every row (the test oracle).

Order, as in ``qme_ext.topk``: descending (``largest``) or ascending score, NaN
after every real score in both directions, -0.0 tied with +0.0, ties by lower
gallery index. Keys are those of ``qme_ext.ops.keys`` (the package's total order).
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops.keys import keys32, keys64

_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def _selection_keys(x: np.ndarray, largest: bool) -> np.ndarray:
    """(P, G) float32/float64 -> (P, G) uint64 keys, higher = better, NaN = 0."""
    k = (keys64 if x.dtype == np.float64 else keys32)(x.reshape(-1)).reshape(x.shape)
    if not largest:
        k = np.where(k == 0, k, ~k)  # reverse every real score, NaN stays lowest
    return k


def topk_ref(scores, k: int, largest: bool = True):
    """(values (P, k), indices (P, k) int64) of a (P, G) numpy array or torch tensor.

    The result has the input's type (and device); values are the stored scores at
    the chosen indices, in the input dtype.
    """
    if isinstance(scores, torch.Tensor):
        wide = torch.float64 if scores.dtype == torch.float64 else torch.float32
        x = scores.detach().to("cpu", wide).numpy()
    else:
        x = np.asarray(scores)
        x = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k: expected 1 <= k <= {x.shape[1]}, got {k}")
    order = np.argsort(~_selection_keys(x, largest), axis=1, kind="stable")[:, :k]
    if isinstance(scores, torch.Tensor):
        idx = torch.from_numpy(np.ascontiguousarray(order)).to(scores.device)
        # Gathered as integers: torch's half-precision gather may rewrite NaN payloads.
        bits = _INT_VIEW[scores.dtype]
        return scores.detach().view(bits).gather(1, idx).view(scores.dtype), idx
    return np.take_along_axis(np.asarray(scores), order, axis=1), order.astype(np.int64)
