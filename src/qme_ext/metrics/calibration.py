"""Calibration and detection-cost metrics of verification scores (issue 22):
Cllr, minCllr (PAV) and minDCF / actDCF, from the distinct-score counts that
:func:`qme_ext.metrics.verification` already has (``values`` descending, ``n_gen`` and
``n_imp`` the genuine and impostor counts at each value).

Definitions (higher score = more alike; ``N_gen``, ``N_imp`` the pair counts):

``Cllr`` (Brümmer & du Preez 2006; bob.measure ``calibration.cllr``)
    the scores read as natural-log likelihood ratios ``s = ln p(s|gen) / p(s|imp)``:
    ``Cllr = 1/2 [ mean_gen log2(1 + e^-s) + mean_imp log2(1 + e^s) ]``. 0 for perfect,
    1 for the uninformative ``s = 0``; > 1 for miscalibrated scores. Only meaningful when
    the scores are LLRs (e.g. the ``llr`` fusion of :mod:`qme_ext.fusion`); for raw
    similarities (cosines) read minCllr.
``minCllr`` (bob.measure ``calibration.min_cllr``)
    Cllr after the optimal monotone recalibration: the pool-adjacent-violators (PAV)
    fit of the genuine share, non-decreasing in the score, turned into LLRs by
    subtracting the empirical prior log-odds ``ln(N_gen / N_imp)``. Invariant to any
    increasing transform of the scores. Tied scores form one PAV block (a function of
    the score cannot split them); bob.measure instead orders an impostor before a
    genuine score at a tie and adds ``1e-6 · i`` to the i-th LLR, so on tied scores it
    can differ slightly.
``minDCF`` (NIST SRE; kaldi ``compute_min_dcf.py``, wespeaker)
    ``DCF(t) = c_miss · p_target · P_miss(t) + c_fa · (1 − p_target) · P_fa(t)`` with
    ``P_miss(t) = #{gen < t} / N_gen``, ``P_fa(t) = #{imp >= t} / N_imp``, minimised over
    every operating point (a threshold at each distinct score, and "reject all"), divided
    by ``c_def = min(c_miss · p_target, c_fa · (1 − p_target))`` (``normalize=True``, the
    convention of kaldi and the SRE plans) so that 1 is the cost of the best trivial
    system. Defaults ``p_target=0.01, c_miss=1, c_fa=1`` (kaldi's). The threshold is the
    lowest score accepted at the minimum (ties: the highest threshold).
``actDCF``
    the same cost at the Bayes threshold of LLR scores,
    ``t = ln(c_fa (1 − p_target) / (c_miss p_target))``, accepting ``s >= t``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["pav", "cllr_of_counts", "min_cllr_of_counts", "min_dcf_of_counts",
           "act_dcf_of_counts", "check_costs"]

_LN2 = math.log(2.0)


def pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of ``y`` (T,) with positive
    weights ``w`` (T,) by pool adjacent violators; returns the fit (T,) float64."""
    means, weights, sizes = [], [], []
    for yi, wi in zip(np.asarray(y, dtype=np.float64).tolist(),
                      np.asarray(w, dtype=np.float64).tolist()):
        m, ww, n = yi, wi, 1
        # merge with the previous blocks while they violate the order
        while means and means[-1] >= m:
            pm, pw, pn = means.pop(), weights.pop(), sizes.pop()
            m = (pm * pw + m * ww) / (pw + ww)
            ww, n = pw + ww, pn + n
        means.append(m)
        weights.append(ww)
        sizes.append(n)
    return np.repeat(np.asarray(means, dtype=np.float64), sizes)


def _weighted_cllr(llr: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> float:
    """Cllr of LLRs ``llr`` (T,) held by n_gen genuine and n_imp impostor pairs each."""
    with np.errstate(over="ignore", invalid="ignore"):
        # log(1 + e^x) = logaddexp(0, x); a count of 0 contributes nothing, even at +-inf
        miss = np.where(n_gen > 0, n_gen * np.logaddexp(0.0, -llr), 0.0).sum()
        fa = np.where(n_imp > 0, n_imp * np.logaddexp(0.0, llr), 0.0).sum()
    return float((miss / n_gen.sum() + fa / n_imp.sum()) / (2.0 * _LN2))


def cllr_of_counts(values: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> float:
    """Cllr (bits) of distinct scores ``values`` (T,) read as natural-log LLRs, with the
    genuine/impostor counts ``n_gen``, ``n_imp`` (T,) int64 at each value."""
    return _weighted_cllr(np.asarray(values, dtype=np.float64), n_gen, n_imp)


def min_cllr_of_counts(values: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> float:
    """minCllr (bits): Cllr after the PAV recalibration of the scores (module docstring).
    ``values`` (T,) distinct scores, any order; ``n_gen``, ``n_imp`` (T,) counts."""
    order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")  # ascending
    g, i = n_gen[order].astype(np.float64), n_imp[order].astype(np.float64)
    post = pav(g / (g + i), g + i)  # P(genuine | score), non-decreasing
    with np.errstate(divide="ignore"):
        llr = np.log(post) - np.log1p(-post) - math.log(g.sum() / i.sum())
    return _weighted_cllr(llr, g, i)


def check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    """ValueError unless 0 < p_target < 1 and the costs are finite and > 0 (Python or
    numpy real numbers, not bools: ``np.float32(0.05)`` is a prior like 0.05)."""
    def real(x) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and \
            not isinstance(x, (bool, np.bool_))

    if not (real(p_target) and 0.0 < float(p_target) < 1.0):
        raise ValueError(f"p_target: expected a prior probability in (0, 1), got {p_target!r}")
    for name, c in (("c_miss", c_miss), ("c_fa", c_fa)):
        if not (real(c) and math.isfinite(float(c)) and float(c) > 0):
            raise ValueError(f"{name}: expected a finite cost > 0, got {c!r}")


def _dcf(p_miss, p_fa, p_target, c_miss, c_fa, normalize):
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return cost / min(c_miss * p_target, c_fa * (1.0 - p_target)) if normalize else cost


def min_dcf_of_counts(values: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray,
                      p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
                      normalize: bool = True) -> tuple[float, float]:
    """(minDCF, threshold) over every operating point of the distinct scores ``values``
    (T,) sorted descending with counts ``n_gen``, ``n_imp`` (T,); threshold +inf when
    rejecting everything is the minimum."""
    check_costs(p_target, c_miss, c_fa)
    N_gen, N_imp = n_gen.sum(), n_imp.sum()
    # accept s >= values[j]: the first j+1 distinct values; then "reject all"
    p_miss = np.concatenate([1.0 - np.cumsum(n_gen) / N_gen, [1.0]])
    p_fa = np.concatenate([np.cumsum(n_imp) / N_imp, [0.0]])
    cost = _dcf(p_miss, p_fa, p_target, c_miss, c_fa, normalize)
    j = int(np.argmin(cost))  # first minimum: the highest threshold
    thr = float(values[j]) if j < len(values) else float("inf")
    return float(cost[j]), thr


def act_dcf_of_counts(values: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray,
                      p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
                      normalize: bool = True) -> float:
    """DCF of LLR scores at the Bayes threshold ln(c_fa (1 - p_target) / (c_miss p_target))."""
    check_costs(p_target, c_miss, c_fa)
    t = math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))
    acc = np.asarray(values, dtype=np.float64) >= t
    p_miss = 1.0 - n_gen[acc].sum() / n_gen.sum()
    p_fa = n_imp[acc].sum() / n_imp.sum()
    return float(_dcf(p_miss, p_fa, p_target, c_miss, c_fa, normalize))
