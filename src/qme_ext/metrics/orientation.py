"""Distances as well as similarities: ``larger_is_better=False`` (issue 21).

The engine ranks, thresholds and splits on similarities (higher = more alike). A
distance matrix ``D`` (torchreid's ``distmat``, a Euclidean distance) is evaluated as
the similarity ``-D``: the negation is applied block by block at the boundary
(:class:`NegatedSource`), so every pass, tie rule and NaN rule is the engine's own,
mirrored:

* ties in ranking still go to the lower gallery index, and ``-0.0`` ties with ``+0.0``;
* a NaN distance ranks after every distance, ``+inf`` included (NaN ranks below ``-inf``
  as a similarity); for TAR/FAR a NaN takes the largest non-NaN distance (the minimum
  non-NaN similarity); open-set treats it as ``+inf`` (never accepted).

Every rate of the report is therefore that of ``-D``. Thresholds are reported in the
input's units: a distance threshold ``t`` accepts a pair when ``D <= t`` (it is minus the
similarity threshold of ``-D``), and a threshold's interval ``(lo, hi)`` is minus the
similarity interval, swapped. Negation is exact in IEEE arithmetic, so the report of
``D`` with ``larger_is_better=False`` equals the report of ``-D`` with every threshold
negated, bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

from .accumulate import Block, BlockSource

__all__ = ["NegatedSource", "check_larger_is_better", "is_threshold_key",
           "negate_report_thresholds"]


def check_larger_is_better(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"larger_is_better: expected True (similarities) or False "
                        f"(distances), got {value!r}")
    return bool(value)


class NegatedSource(BlockSource):
    """The blocks of ``inner`` with every score negated (a distance read as a similarity).

    Each block is negated when it is handed over and dropped with it: one more block in
    memory, never a negated copy of the whole matrix (unless the source is one block)."""

    def __init__(self, inner: BlockSource):
        self.inner = inner
        self.num_rows, self.num_cols = inner.num_rows, inner.num_cols
        self.merge_cols, self.dtype, self.device = inner.merge_cols, inner.dtype, inner.device
        self.cheap_rewalk = inner.cheap_rewalk

    def blocks(self, scores: bool = True, merge: bool = False):
        for blk in self.inner.blocks(scores, merge):
            out = Block(blk.rows, None if blk.scores is None else torch.neg(blk.scores),
                        None if blk.merge is None else torch.neg(blk.merge))
            del blk
            yield out
            out.scores = out.merge = None


def is_threshold_key(key: str) -> bool:
    """Whether a report key (or its ``_ci``) holds a score threshold."""
    base = key[:-3] if key.endswith("_ci") else key
    return base.startswith("Threshold@") or base.endswith("_threshold")


def negate_report_thresholds(out: dict) -> dict:
    """``out`` (an :func:`~qme_ext.metrics.evaluate` report, or its ``BootReport``) with
    every threshold negated in place, intervals swapped and replicates negated: the
    similarity thresholds of ``-D`` read back as distance thresholds of ``D``."""
    for key in list(out):
        if not is_threshold_key(key):
            continue
        v = out[key]
        out[key] = (-v[1], -v[0]) if key.endswith("_ci") else -v
    reps = getattr(out, "replicates", None)
    if reps:
        for key in list(reps):
            if is_threshold_key(key):
                reps[key] = -np.asarray(reps[key])
    return out
