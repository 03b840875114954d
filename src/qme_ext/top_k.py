"""Top-k retrieval: the k best gallery entries of every probe, exactly ordered.

:func:`topk` is ``qme_ext.topk``; the QME-fused search that streams gallery tiles
is :func:`qme_ext.qme.search`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .ops.inputs import as_score_matrix
from .ops.topk import MAX_K, topk as _topk_op

__all__ = ["TopK", "topk", "MAX_K"]


class TopK(NamedTuple):
    """``(values, indices)``, each ``(P, k)``; unpacks like a tuple."""

    values: "np.ndarray | torch.Tensor"
    indices: "np.ndarray | torch.Tensor"


def check_k(k, num_columns: int) -> int:
    """k as an int in [1, min(G, MAX_K)], else a ValueError/TypeError naming k."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an integer, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k: expected 1 <= k <= {MAX_K}, got {k}")
    if k > num_columns:
        raise ValueError(f"k: expected k <= G = {num_columns} gallery columns, got k = {k}")
    return k


def check_largest(largest) -> bool:
    if not isinstance(largest, (bool, np.bool_)):
        raise TypeError(f"largest: expected a bool, got {type(largest).__name__}")
    return bool(largest)


def topk(scores, k: int, largest: bool = True) -> TopK:
    """The ``k`` best entries of every row of a ``(P, G)`` score matrix.

    Parameters
    ----------
    scores : (P, G) numpy array or torch tensor (CPU or CUDA), float16, bfloat16,
        float32 or float64, any strides (transposed and sliced inputs are read in
        place). Higher = more alike.
    k : 1 <= k <= min(G, 2048).
    largest : True (default) for the highest scores, False for the lowest.

    Returns
    -------
    TopK(values, indices), both ``(P, k)``, each row best first. ``values`` has the
    dtype of ``scores`` and holds the stored scores bit for bit
    (``values == scores[p, indices[p]]``); ``indices`` is int64. numpy in gives
    numpy out; a tensor in gives tensors on its device.

    Order: the package's ranking (as in Rank-k/CMC). A NaN score means "no score"
    and ranks after every real score in both directions (unlike ``torch.topk``,
    which treats NaN as the largest value); -0.0 ties with +0.0; ties, and NaNs
    among themselves, go to the lower gallery index, so the result is deterministic
    and identical on CPU and CUDA.

    Not differentiable: the values are returned detached. For gradients, gather
    from the scores with the indices: ``scores.gather(1, indices)``.
    """
    is_numpy = isinstance(scores, np.ndarray)
    t = as_score_matrix(scores, "scores")
    k = check_k(k, t.shape[1])
    values, indices = _topk_op(t.detach(), k, check_largest(largest))
    if is_numpy:
        return TopK(values.numpy(), indices.numpy())
    return TopK(values, indices)
