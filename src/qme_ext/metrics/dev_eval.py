"""Thresholds fixed on a development set, applied to an evaluation set (issue 22;
bob.measure's guide: "a threshold is chosen on the development set and the error rates
are reported on the evaluation set").

:func:`dev_eval` fixes one threshold per operating point on the dev scores (the EER
threshold of :func:`qme_ext.metrics.eer`, bob.measure's midpoint rule, and the FNMR@FMR
threshold of each FMR target, by ``far_convention``: "conservative" = bob.measure
``far_threshold``, achieved dev FMR <= target, the default here; "qme" = the k-th largest
impostor) and reports, at that fixed threshold, FMR, FNMR and the half total error rate
``HTER = (FMR + FNMR) / 2`` on both sets. Rates at a threshold t:
``FMR = #{impostor >= t} / N_imp``, ``FNMR = #{genuine < t} / N_gen``.

:func:`epc` is bob.measure's expected performance curve: for each ``alpha`` of
``linspace(0, 1, n_points)`` the dev threshold minimising the weighted error
``alpha · FMR + (1 − alpha) · FNMR`` (bob.measure ``min_weighted_error_rate_threshold``;
candidates are the midpoints between consecutive distinct dev scores plus one just
below the minimum and one just above the maximum, as for the EER; ties go to the lowest
threshold), and the eval HTER at it.

NaN scores take the minimum finite score of their set, like :func:`verification`.

Orientation (issue 27): ``larger_is_better=False`` (distances, lower = more alike) is
honoured by every number: the rates are those of the negated distances, and every
threshold (operating points, EPC) is reported in distance units, accepting ``d <= t``,
as :func:`verification` reports them. The four vectors are always score vectors: a 0/1
impostor vector is scores, never labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .core import _distinct_counts, midpoint_candidates
from .orientation import check_larger_is_better
from .verification import DEFAULT_FMRS, _negated, _one_row, verification

__all__ = ["dev_eval", "epc", "DevEvalResult", "OperatingPoint", "rates_at", "MAX_EPC_POINTS"]

# the most EPC points (one threshold search over the dev candidates each)
MAX_EPC_POINTS = 100_000


def _counts(genuine, impostor, name: str):
    """(values desc (T,), n_gen (T,), n_imp (T,)) of one set's score vectors."""
    S, labels = _one_row(genuine, impostor, None)
    if not bool(labels.any()) or bool(labels.all()):
        raise ValueError(f"{name}: need at least one genuine and one impostor score")
    one = torch.ones(1, dtype=torch.int64, device=S.device)
    return _distinct_counts(S, one, labels)


def _rates(counts, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) of a set's counts at each threshold (any shape)."""
    values, n_gen, n_imp = counts
    asc = values[::-1]
    t = np.asarray(thresholds, dtype=np.float64)
    below = np.searchsorted(asc, t, side="left")  # distinct values < t
    gen_below = np.concatenate([[0], np.cumsum(n_gen[::-1])])[below]
    imp_below = np.concatenate([[0], np.cumsum(n_imp[::-1])])[below]
    N_gen, N_imp = n_gen.sum(), n_imp.sum()
    return (N_imp - imp_below) / N_imp, gen_below / N_gen


def rates_at(genuine, impostor, thresholds, larger_is_better: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) of genuine/impostor score vectors at each of ``thresholds`` (K,)
    (``larger_is_better=False``: distances and distance thresholds, accepting d <= t)."""
    sign, g, i = _oriented(larger_is_better, genuine, impostor)
    return _rates(_counts(g, i, "scores"), sign * np.asarray(thresholds, dtype=np.float64))


@dataclass
class OperatingPoint:
    """One threshold fixed on dev and its rates on both sets (fractions)."""

    name: str  # "EER" or "FMR=0.10%" (the dev criterion)
    threshold: float
    dev_fmr: float
    dev_fnmr: float
    eval_fmr: float
    eval_fnmr: float

    @property
    def dev_hter(self) -> float:
        return (self.dev_fmr + self.dev_fnmr) / 2.0

    @property
    def eval_hter(self) -> float:
        return (self.eval_fmr + self.eval_fnmr) / 2.0


@dataclass
class DevEvalResult:
    """Operating points of :func:`dev_eval` and the EPC of the same sets."""

    points: list
    far_convention: str
    epc: tuple = ()  # (alpha (A,), eval HTER (A,), dev thresholds (A,))
    dev: object = None  # VerificationResult of the dev set
    eval: object = None  # VerificationResult of the eval set (its own thresholds)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Flat {key: float}: ``<point>_threshold``, ``<point>_dev_FMR``, ... ``_eval_HTER``."""
        out = {}
        for p in self.points:
            out[f"{p.name}_threshold"] = p.threshold
            out[f"{p.name}_dev_FMR"], out[f"{p.name}_dev_FNMR"] = p.dev_fmr, p.dev_fnmr
            out[f"{p.name}_dev_HTER"] = p.dev_hter
            out[f"{p.name}_eval_FMR"], out[f"{p.name}_eval_FNMR"] = p.eval_fmr, p.eval_fnmr
            out[f"{p.name}_eval_HTER"] = p.eval_hter
        return out


def _epc(dev_counts, eval_counts, n_points: int) -> tuple:
    if not isinstance(n_points, (int, np.integer)) or isinstance(n_points, bool) \
            or not 2 <= n_points <= MAX_EPC_POINTS:
        raise ValueError(f"n_points: expected an integer in [2, {MAX_EPC_POINTS}], got "
                         f"{n_points!r}")
    cand_t, cand_imp, cand_gen = midpoint_candidates(*dev_counts)
    far = cand_imp / dev_counts[2].sum()
    frr = cand_gen / dev_counts[1].sum()
    alphas = np.linspace(0.0, 1.0, int(n_points))
    thr = np.array([cand_t[int(np.argmin(a * far + (1.0 - a) * frr))] for a in alphas])
    fmr, fnmr = _rates(eval_counts, thr)
    return alphas, (fmr + fnmr) / 2.0, thr


def _oriented(larger_is_better, *vectors) -> tuple:
    """(sign, vectors as similarities): sign -1 when they were distances (negated)."""
    if check_larger_is_better(larger_is_better):
        return (1.0,) + vectors
    return (-1.0,) + tuple(_negated(v) for v in vectors)


def epc(dev_genuine, dev_impostor, eval_genuine, eval_impostor,
        n_points: int = 100, larger_is_better: bool = True
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected performance curve (bob.measure ``epc``): (alpha (A,), eval HTER (A,), dev
    threshold (A,)) for alpha in linspace(0, 1, n_points); see the module docstring
    (``larger_is_better=False``: distances, thresholds in distance units)."""
    sign, dg, di, eg, ei = _oriented(larger_is_better, dev_genuine, dev_impostor,
                                     eval_genuine, eval_impostor)
    alphas, hter, thr = _epc(_counts(dg, di, "dev"), _counts(eg, ei, "eval"), n_points)
    return alphas, hter, sign * thr


def dev_eval(dev_genuine, dev_impostor, eval_genuine, eval_impostor,
             fmrs: Sequence[float] = DEFAULT_FMRS, far_convention: str = "conservative",
             epc_points: int = 100, **verification_options) -> DevEvalResult:
    """Thresholds fixed on dev (EER, each FMR target), rates on dev and eval, and the EPC.

    Score vectors (numpy, lists or torch tensors; higher = more alike): dev genuine (Ng,),
    dev impostor (Ni,), eval genuine (Mg,), eval impostor (Mi,). ``fmrs``: FMR targets
    (fractions); ``far_convention``: "conservative" (bob.measure ``far_threshold``) or
    "qme"; ``verification_options`` go to :func:`verification` of both sets (e.g.
    ``p_target``, ``larger_is_better``); its results are on ``dev`` and ``eval``.
    ``larger_is_better=False``: the scores are distances (module docstring).
    """
    larger = verification_options.pop("larger_is_better", True)
    sign, dg, di, eg, ei = _oriented(larger, dev_genuine, dev_impostor, eval_genuine,
                                     eval_impostor)
    dev = verification(dev_genuine, dev_impostor, fmrs, far_convention=far_convention,
                       larger_is_better=larger, **verification_options)
    ev = verification(eval_genuine, eval_impostor, fmrs, far_convention=far_convention,
                      larger_is_better=larger, **verification_options)
    names = ["EER"] + [f"FMR={f:.2%}" for f in dev.fmrs]
    # dev's thresholds in the similarity orientation of dg/di (negated back for distances)
    thresholds = sign * np.concatenate([[dev.eer_threshold],
                                        dev.fmr_threshold]).astype(np.float64)
    dev_counts = _counts(dg, di, "dev")
    eval_counts = _counts(eg, ei, "eval")
    dfmr, dfnmr = _rates(dev_counts, thresholds)
    efmr, efnmr = _rates(eval_counts, thresholds)
    points = [OperatingPoint(n, float(sign * t), float(a), float(b), float(c), float(d))
              for n, t, a, b, c, d in zip(names, thresholds, dfmr, dfnmr, efmr, efnmr)]
    alphas, hter, thr = _epc(dev_counts, eval_counts, epc_points)
    return DevEvalResult(points, far_convention, (alphas, hter, sign * thr), dev, ev)
