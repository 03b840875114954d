"""Non-finite values around QME: the rule for NaN/inf inputs, and the guard that no
training run or checkpoint ever holds NaN or inf weights.

One NaN score (or NaN/inf quality feature) in a training batch turns the loss, then
every weight, into NaN; ``qme-ext train`` used to write such a checkpoint and
``qme-ext fuse`` then a model of NaN scores. Two defences:

* :func:`replace_nonfinite`: the documented input rule of ``qme-ext train`` and ``fuse``,
  the QME reference's ``np.nan_to_num`` (NaN -> 0, +-inf -> the largest finite float32 of
  that sign; a quality row that becomes all zeros is a probe without a face, q = 0),
  with the counts for a warning; the same rule :mod:`qme_ext.fusion` applies;
* :func:`require_finite_weights`: a :class:`NonFiniteWeightsError` (a ValueError) naming
  the first non-finite tensor, raised by training at each validation and by
  :func:`qme_ext.qme.checkpoint.save_checkpoint`, so a diverged run stops with a message
  instead of producing a checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np
import torch

__all__ = ["NonFiniteWeightsError", "require_finite_weights", "replace_nonfinite"]


class NonFiniteWeightsError(ValueError):
    """Weights (of a model being trained or saved) hold NaN or inf."""


def require_finite_weights(weights: Union[torch.nn.Module, dict, None], what: str) -> None:
    """NonFiniteWeightsError when a floating tensor of ``weights`` (a module, or a state
    dict ``{name: tensor}``) holds NaN or inf; ``what`` says whose weights they are."""
    if weights is None:
        return
    items = weights.state_dict().items() if isinstance(weights, torch.nn.Module) else \
        weights.items()
    for name, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() \
                and not bool(torch.isfinite(t).all()):
            raise NonFiniteWeightsError(
                f"{what}: weight '{name}' holds NaN or inf (the training diverged: a NaN or "
                "inf input, or a learning rate too large); nothing was written from it")


def _replaced(arr: np.ndarray):
    """(``arr`` with NaN -> 0, +-inf -> +-max float32, the number of entries replaced)."""
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating) or np.isfinite(arr).all():
        return arr, 0
    big = float(np.finfo(np.float32).max)
    n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    return np.nan_to_num(arr, nan=0.0, posinf=big, neginf=-big), n


def replace_nonfinite(scoreset):
    """(a copy of the :class:`~qme_ext.io.ScoreSet` with every NaN/inf entry of its score,
    merge and quality arrays replaced by the QME reference's rule, ``{file key: count}``
    of the entries replaced); arrays without any are shared, not copied."""
    counts, fields = {}, {}
    for field, prefix in (("score_mats", "{}/score_mat"), ("merge_score_mats",
                                                            "{}/merge_score_mat"),
                          ("quality", "quality/{}")):
        out = {}
        for name, arr in getattr(scoreset, field).items():
            out[name], n = _replaced(arr)
            if n:
                counts[prefix.format(name)] = n
        fields[field] = out
    if not counts:
        return scoreset, counts
    return dataclasses.replace(scoreset, **fields), counts
