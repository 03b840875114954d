"""R-precision and MAP@R (Musgrave, Belongie and Lim, "A Metric Learning Reality Check",
ECCV 2020; pytorch-metric-learning's ``AccuracyCalculator``).

Per valid probe, with its ``R = n`` good entries at 0-based positions ``p_1 < ... < p_n``
after junk removal (docs/definitions.rst, §2.1): ``R-precision = #{i : p_i < R} / R`` (the share of good
entries among the first R) and ``MAP@R = (1/R) * sum_{i : p_i < R} i / (p_i + 1)`` (AP
truncated to the first R positions: the precision at each good entry there, summed, over
R). The ranking pass (``rank_counts``) reads both off the same positions as AP and
returns ``r_hits = #{i : p_i < R}`` and ``map_r``. Means run over the probes with at least
one good entry, as mAP's.

Junk and cameras: the engine's modes decide what is good and what is removed (GR: same
pid, other camera good, same camera junk; SC/CC as docs/definitions.rst, §2.1; no camera ids: every same-pid
entry good, nothing junk). pytorch-metric-learning has no camera filter; its numbers are
those of the engine without camera ids, and its ``query = reference`` setting (each
query's own entry excluded) is that of the square matrix with camera id = the entry's
index, so that only the diagonal shares a camera and is junk
(:class:`qme_ext.metrics.Evaluator` with ``is_query="both"`` and no camera ids does
exactly this). Probes whose pid has no good entry are skipped (counted in
``num_skipped``); pytorch-metric-learning leaves out such "lone" queries the same way.
Equality with its ``AccuracyCalculator`` (precision_at_1, r_precision,
mean_average_precision_at_r) is tested in tests/test_rprecision.py.
"""
from __future__ import annotations

import numpy as np


def r_precision_of(r_hits: np.ndarray, num_good: np.ndarray) -> np.ndarray:
    """Per-probe R-precision, float64, same shape as the int64 inputs ``r_hits`` (goods at
    positions < R) and ``num_good`` (R); 0 where R == 0."""
    valid = num_good > 0
    return np.where(valid, r_hits / np.where(valid, num_good, 1), 0.0)
