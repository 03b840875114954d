"""mINP, the mean inverse negative penalty (Ye et al., "Deep Learning for Person
Re-identification: A Survey and Outlook", TPAMI 2021; fast-reid's ``evaluate_rank``).

Per valid probe, with the good entries at 0-based positions ``p_1 < ... < p_n`` after
junk removal (docs/definitions.rst, §2.1), ``INP = n / (p_n + 1)``: the share of correct matches among
the entries a user must inspect to reach the hardest correct match. mINP is the mean
over the probes with at least one good entry (skipped probes are left out, as for
mAP). The ranking pass gives ``p_n`` as ``last_pos`` beside ``first_pos``.
"""
from __future__ import annotations

import numpy as np


def inp_of(last_pos: np.ndarray, num_good: np.ndarray) -> np.ndarray:
    """Per-probe INP, float64, same shape as the int64 inputs ``last_pos`` (0-based p_n,
    -1 where no good entry) and ``num_good`` (n); 0 where n == 0."""
    valid = num_good > 0
    return np.where(valid, num_good / (np.where(valid, last_pos, 0) + 1.0), 0.0)
