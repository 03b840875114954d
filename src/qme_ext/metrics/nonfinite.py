"""Non-finite scores: the warning the engine gives when score matrices or vectors hold
NaN or +-inf entries, the counts it carries, and the sentence saying what they became
(NaN -> the minimum non-NaN score for TAR/FAR and ranked below -inf; -inf for open set).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..ops.inputs import no_finite_message

__all__ = ["NonFiniteScoreWarning", "count_nonfinite", "describe_nonfinite", "warn_nonfinite",
           "warn_matrix_counts", "require_finite_counts"]


class NonFiniteScoreWarning(UserWarning):
    """Scores held NaN or +-inf entries (what they became is in the message); ``counts``
    holds the entry counts ({"nan", "posinf", "neginf"}, or one such dict per matrix)."""

    def __init__(self, message: str, counts: Optional[dict] = None):
        super().__init__(message)
        self.counts = counts or {}


def count_nonfinite(t: torch.Tensor) -> dict:
    """{"nan", "posinf", "neginf"} entry counts of a tensor; one ``isfinite`` reduction when
    everything is finite (the usual case), the split only when something is not."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        return {"nan": int(torch.isnan(t).sum()), "posinf": int(torch.isposinf(t).sum()),
                "neginf": int(torch.isneginf(t).sum())}
    return {"nan": 0, "posinf": 0, "neginf": 0}


# what the engine does with NaN (metrics: docs/definitions.rst, §2): thresholds/curves, and open-set rows
NAN_RULE = "the minimum non-NaN score"
NAN_RULE_MATRIX = "the minimum non-NaN score for TAR/FAR, ranked below -inf"
NAN_RULE_MERGE = "-inf for open-set, never above a threshold"


def describe_nonfinite(counts: dict, nan_rule: str = NAN_RULE) -> str:
    """'' when nothing is non-finite, else e.g. '2 NaN (-> the minimum non-NaN score), 1 +inf
    (kept: above every finite score)'."""
    parts = []
    if counts.get("nan"):
        parts.append(f"{counts['nan']} NaN (-> {nan_rule})")
    if counts.get("posinf"):
        parts.append(f"{counts['posinf']} +inf (kept: above every finite score)")
    if counts.get("neginf"):
        parts.append(f"{counts['neginf']} -inf (kept: below every finite score)")
    return ", ".join(parts)


def warn_nonfinite(counts: dict, what: str, stacklevel: int = 3) -> None:
    """A :class:`NonFiniteScoreWarning` for ``what`` when ``counts`` is not all zero."""
    text = describe_nonfinite(counts)
    if text:
        warnings.warn(NonFiniteScoreWarning(f"{what}: {text}", counts), stacklevel=stacklevel)


def require_finite_counts(counts: dict, shapes: dict) -> None:
    """ValueError naming the matrix when ``counts[key]`` ({"nan", "posinf", "neginf"})
    covers every entry of ``shapes[key]`` (a (rows, cols) shape): a matrix with no finite
    score gives numbers decided by the NaN rule alone (TAR 100% at every FAR, FNMR 0),
    which must never be reported."""
    for key, shape in shapes.items():
        n = int(shape[0]) * int(shape[1])
        if n and sum(counts.get(key, {}).values()) >= n:
            raise ValueError(no_finite_message(key, tuple(shape)))


def warn_matrix_counts(counts: dict, stacklevel: int = 3) -> None:
    """One :class:`NonFiniteScoreWarning` naming what each non-finite entry of an
    evaluation's two matrices became, from ``counts`` = {"score_mat": {...},
    "merge_score_mat": {...}} gathered by the engine's passes (or by the blocks of an
    out-of-core evaluation); nothing when all are zero."""
    parts = [f"{key} {text}" for key, rule in (("score_mat", NAN_RULE_MATRIX),
                                               ("merge_score_mat", NAN_RULE_MERGE))
             for text in [describe_nonfinite(counts.get(key, {}), rule)] if text]
    if parts:
        warnings.warn(NonFiniteScoreWarning("; ".join(parts), counts), stacklevel=stacklevel)
