"""Verification metrics of two score vectors (genuine, impostor) or of scores + labels.

:func:`verification` is the one-row case of the evaluation engine: the vectors become a
(1, N) matrix whose single probe shares its id with the genuine entries, and every number
comes from the kernels of :mod:`qme_ext.metrics`:

* FNMR at each FMR: ``tar_at_far`` (radix select of the impostor order statistics, no
  sort), ``FNMR = 1 - TAR``; ``far_convention`` "qme" (k-th largest impostor, k the
  smallest with k / N_imp >= FMR) or "conservative" (bob.measure ``far_threshold``);
* everything read off the whole curve (EER, FMR at FNMR, ZeroFMR/ZeroFNMR, AUC, d',
  ROC/DET points) uses the exact distinct-value counts of ``metrics._distinct_counts``
  (one sort of the keys, as ``metrics.roc``/``metrics.eer`` do).

Rates at a threshold t: FMR(t) = #{impostor >= t} / N_imp, FNMR(t) = #{genuine < t} / N_gen
(higher score = more alike). NaN scores take the minimum finite score, like the rest of
qme_ext and the QME reference; a :class:`NonFiniteScoreWarning` says how many there were.

EER conventions (``convention=``; :attr:`VerificationResult.eers` holds all three):

``"bob"`` (default; what :func:`qme_ext.metrics.eer` reports)
    bob.measure ``eer``: candidate thresholds just below the minimum, at the midpoints of
    consecutive distinct scores and just above the maximum; the one with the smallest
    |FMR - FNMR| (exact integer comparison, ties to the lowest threshold), EER = (FMR + FNMR) / 2.
``"pyeer"``
    pyeer ``get_eer_stats`` / FVC2000 (Maio et al. 2002): thresholds are the distinct scores
    (ascending); t2 = the first with FMR <= FNMR, t1 the one before it (unless FMR = FNMR at
    t2); of t1, t2 the one with the smaller FMR + FNMR; EER = (FMR + FNMR) / 2 there, the
    midpoint of [EER_low, EER_high].
``"sklearn"``
    the ROC of ``sklearn.metrics.roc_curve`` (points at every distinct score plus the
    origin) joined linearly, EER = the FPR where it meets FNR = FPR: what the common recipe
    ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` computes, without the solver.

On continuous scores the three agree to about 1 / N; on heavily tied scores they differ,
so quote the convention with the number.

Other definitions: FMR@FNMR=x is the FMR at the highest distinct threshold with FNMR <= x;
ZeroFMR = FNMR at the lowest threshold with FMR = 0 (just above the largest impostor);
ZeroFNMR = FMR at the highest threshold with FNMR = 0 (the smallest genuine score); AUC is
the area under the full ROC, ties counted half (= ``sklearn.metrics.roc_auc_score``);
d' = |mu_G - mu_I| / sqrt((sigma_G^2 + sigma_I^2) / 2), ddof 0 (pyeer's decidability), over
the scores with NaN replaced.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..ops.inputs import as_probabilities, check_target_device
from . import calibration as _cal
from .nonfinite import (NonFiniteScoreWarning, count_nonfinite, describe_nonfinite,
                        require_finite_counts, warn_nonfinite)

EER_CONVENTIONS = ("bob", "pyeer", "sklearn")
DEFAULT_FMRS = (1e-4, 1e-3, 1e-2)
DEFAULT_FNMRS = (1e-3, 1e-2, 1e-1)

__all__ = ["verification", "VerificationResult", "EER_CONVENTIONS"]


@dataclass
class VerificationResult:
    """Everything :func:`verification` measured; rates are fractions."""

    eer: float
    eer_threshold: float
    convention: str
    eers: dict  # {convention: (eer, threshold)} for every EER convention
    fmrs: np.ndarray  # requested FMRs
    fnmr_at_fmr: np.ndarray
    fmr_threshold: np.ndarray
    achieved_fmr: np.ndarray
    fnmrs: np.ndarray  # requested FNMRs
    fmr_at_fnmr: np.ndarray
    fnmr_threshold: np.ndarray
    zero_fmr: float  # FNMR at the lowest threshold with FMR = 0
    zero_fnmr: float  # FMR at the highest threshold with FNMR = 0
    auc: float
    d_prime: float
    num_genuine: int
    num_impostor: int
    num_nonfinite: dict = field(default_factory=dict)
    far_convention: str = "qme"
    roc: tuple = ()  # (fmr (T,), tar (T,), thresholds (T,)) at every distinct score
    det: tuple = ()  # (fmr (T,), fnmr (T,))
    # calibration and detection cost (metrics.calibration; Cllr reads scores as ln LLRs)
    cllr: float = float("nan")  # bits
    min_cllr: float = float("nan")  # bits, after PAV recalibration
    min_dcf: float = float("nan")  # normalised by min(c_miss p_target, c_fa (1 - p_target))
    min_dcf_threshold: float = float("nan")
    act_dcf: float = float("nan")  # at the Bayes threshold of LLR scores
    dcf_costs: tuple = (0.01, 1.0, 1.0)  # (p_target, c_miss, c_fa)

    def __getitem__(self, key):
        return getattr(self, key)

    def as_dict(self) -> dict:
        """Flat {key: float} report (``qme-ext verify --json``; no curves)."""
        from .core import _pct_key
        out = {"EER": self.eer, "EER_threshold": self.eer_threshold}
        for name, (e, t) in self.eers.items():
            out[f"EER_{name}"] = e
            out[f"EER_{name}_threshold"] = t
        for f, v, t in zip(self.fmrs, self.fnmr_at_fmr, self.fmr_threshold):
            out[_pct_key("FNMR", f, "FMR")] = float(v)
            out[_pct_key("FNMR", f, "FMR") + "_threshold"] = float(t)
        for f, v, t in zip(self.fnmrs, self.fmr_at_fnmr, self.fnmr_threshold):
            out[_pct_key("FMR", f, "FNMR")] = float(v)
            out[_pct_key("FMR", f, "FNMR") + "_threshold"] = float(t)
        out.update(ZeroFMR=self.zero_fmr, ZeroFNMR=self.zero_fnmr, AUC=self.auc,
                   d_prime=self.d_prime, num_genuine=float(self.num_genuine),
                   num_impostor=float(self.num_impostor))
        out.update(Cllr=self.cllr, minCllr=self.min_cllr, minDCF=self.min_dcf,
                   minDCF_threshold=self.min_dcf_threshold, actDCF=self.act_dcf)
        return out


def _vector(x, name: str) -> torch.Tensor:
    """(N,) tensor of a vector (detached: metrics take no gradient), numeric only."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a numeric vector, got dtype {arr.dtype}")
        t = torch.as_tensor(arr)
    if t.is_complex():
        raise TypeError(f"{name}: expected a real-valued vector, got {t.dtype}")
    return t.reshape(-1)


def _label_vector(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) int64 labels 1 = genuine of an explicit ``labels=`` vector: bool, or 0/1 of any
    numeric dtype, one per score; ValueError naming ``labels`` otherwise."""
    if labels.numel() != n:
        raise ValueError(f"labels: expected {n} labels (one per score), got {labels.numel()}")
    if labels.dtype != torch.bool:
        binary = bool(((labels == 0) | (labels == 1)).all())
        if not binary:
            values = torch.unique(labels.cpu())[:5].tolist()
            raise ValueError(f"labels: expected bool or 0/1 labels (1 = genuine), got values "
                             f"{values}")
    return labels.to(torch.int64)


def _negated(x):
    """-x of a score vector (numpy, list or tensor) for the distance orientation."""
    return torch.neg(x) if isinstance(x, torch.Tensor) else -np.asarray(x)


def _one_row(genuine, impostor, device, labels=None) -> tuple:
    """((1, N) score tensor, (N,) int64 labels 1 = genuine) of either calling form: two
    score vectors, or (``impostor`` None) scores and explicit ``labels``. Labels are never
    guessed from values: a 0/1 impostor vector is impostor scores (issue 27)."""
    device = check_target_device(device)
    first = _vector(genuine, "genuine" if labels is None else "scores")
    if labels is not None:
        if impostor is not None:
            raise TypeError("impostor, labels: give impostor scores or labels, not both")
        scores = first
        labels = _label_vector(_vector(labels, "labels"), first.numel()).to(first.device)
    else:
        if impostor is None:
            raise TypeError("impostor: required (or labels= with a single score vector)")
        second = _vector(impostor, "impostor")
        if second.dtype == torch.bool:
            raise TypeError("impostor: a bool vector is no score vector; pass labels= "
                            "(verification(scores, labels=labels)) to give labels")
        if not first.is_floating_point():
            first = first.to(torch.float64)
        second = second.to(first.device)
        dtype = torch.promote_types(first.dtype, second.dtype)
        if not dtype.is_floating_point:
            dtype = torch.float64
        scores = torch.cat([first.to(dtype), second.to(dtype)])
        labels = torch.cat([torch.ones(first.numel(), dtype=torch.int64, device=first.device),
                            torch.zeros(second.numel(), dtype=torch.int64,
                                        device=first.device)])
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if device is not None:
        scores, labels = scores.to(device), labels.to(device)
    return scores.reshape(1, -1), labels


def _pyeer_eer(asc, fm, fnm, n_gen, n_imp) -> tuple:
    """FVC2000 EER on ascending thresholds with integer FM/FNM counts (pyeer's rule)."""
    diff = fm * n_gen - fnm * n_imp  # sign of FMR - FNMR, exactly
    below = np.flatnonzero(diff <= 0)
    t2 = int(below[0]) if below.size else len(asc) - 1
    t1 = t2 - 1 if diff[t2] != 0 and t2 != 0 else t2
    s1, s2 = fm[t1] * n_gen + fnm[t1] * n_imp, fm[t2] * n_gen + fnm[t2] * n_imp
    i = t1 if s1 <= s2 else t2
    return float((fm[i] / n_imp + fnm[i] / n_gen) / 2.0), float(asc[i])


def _sklearn_eer(fpr, fnr, thresholds) -> tuple:
    """Where the linearly joined ROC (from the origin) meets FNR = FPR."""
    fpr, fnr = np.concatenate([[0.0], fpr]), np.concatenate([[1.0], fnr])
    d = fnr - fpr
    j = int(np.flatnonzero(d <= 0)[0])  # d ends at -1 (FPR = 1, FNR = 0)
    thr = float(thresholds[j - 1]) if j >= 1 else float("inf")
    if d[j] == 0:
        return float(fpr[j]), thr
    a = d[j - 1] / (d[j - 1] - d[j])
    return float(fpr[j - 1] + a * (fpr[j] - fpr[j - 1])), thr


def verification(genuine, impostor=None, fars: Sequence[float] = DEFAULT_FMRS,
                 fnmrs: Sequence[float] = DEFAULT_FNMRS, convention: str = "bob", *,
                 labels=None, far_convention: str = "qme", device=None,
                 warn: bool = True, p_target: float = 0.01, c_miss: float = 1.0,
                 c_fa: float = 1.0, larger_is_better: bool = True) -> VerificationResult:
    """Verification metrics of genuine and impostor score vectors (higher = more alike).

    ``verification(genuine, impostor)`` takes two score vectors (a 0/1 impostor vector is
    impostor scores: labels are never guessed from values);
    ``verification(scores, labels=labels)`` a score vector and a label vector (True or 1 =
    genuine pair): bool, or 0/1 of any numeric dtype, one per score. Vectors are numpy
    arrays, lists or torch tensors (CPU or CUDA), any float dtype. ``fars``: the FMRs at
    which FNMR is reported; ``fnmrs``: the FNMRs at which FMR is reported; ``convention``:
    the EER convention of :attr:`VerificationResult.eer` (module docstring), every
    convention's EER is in ``eers``; ``far_convention``: the FNMR@FMR threshold rule of
    :func:`qme_ext.metrics.tar_at_far`. ``warn``: a :class:`NonFiniteScoreWarning` when
    scores hold NaN/inf (the counts are in ``num_nonfinite`` either way).
    ``larger_is_better=False``: the scores are distances (lower = more alike); every rate
    is that of their negation and every threshold (EERs, FNMR@FMR, FMR@FNMR, minDCF, the
    ROC's third array) is in distance units, accepting ``d <= t``
    (:mod:`qme_ext.metrics.orientation`); ``cllr``/``act_dcf`` then read the negated
    distances as LLRs.
    ``p_target``, ``c_miss``, ``c_fa``: the detection cost parameters of ``min_dcf`` and
    ``act_dcf``; ``cllr``, ``min_cllr``: :mod:`qme_ext.metrics.calibration` (``cllr``
    reads the scores as natural-log likelihood ratios).
    """
    from .orientation import check_larger_is_better
    if not check_larger_is_better(larger_is_better):
        res = verification(_negated(genuine), None if impostor is None else _negated(impostor),
                           fars, fnmrs, convention, labels=labels,
                           far_convention=far_convention, device=device, warn=warn,
                           p_target=p_target, c_miss=c_miss, c_fa=c_fa)
        return _negate_thresholds(res)
    from .core import _distinct_counts, eer, tar_at_far
    from .order_stats import _largest_k_at_most
    _cal.check_costs(p_target, c_miss, c_fa)
    if convention not in EER_CONVENTIONS:
        raise ValueError(f"convention: expected one of {list(EER_CONVENTIONS)}, got "
                         f"{convention!r}")
    fnmr_list = as_probabilities(fnmrs, "fnmrs")
    S, labels = _one_row(genuine, impostor, device, labels)
    nonfinite = count_nonfinite(S)
    require_finite_counts({"scores": nonfinite}, {"scores": S.shape})  # before any warning
    if warn:
        warn_nonfinite(nonfinite, "verification scores")
    one = torch.ones(1, dtype=torch.int64, device=S.device)
    if not bool(labels.any()) or bool(labels.all()):
        raise ValueError("need at least one genuine and one impostor score")
    tr = tar_at_far(S, one, labels, fars, convention=far_convention)
    values, n_gen, n_imp = _distinct_counts(S, one, labels)  # descending distinct scores
    N_gen, N_imp = int(n_gen.sum()), int(n_imp.sum())
    cg, ci = np.cumsum(n_gen), np.cumsum(n_imp)  # #{genuine >= v}, #{impostor >= v}
    fmr, tar = ci / N_imp, cg / N_gen

    eers = {"bob": eer(S, one, labels)}
    asc = values[::-1]
    eers["pyeer"] = _pyeer_eer(asc, ci[::-1], (N_gen - cg)[::-1], N_gen, N_imp)
    eers["sklearn"] = _sklearn_eer(fmr, 1.0 - tar, values)

    fmr_at, fnmr_thr = [], []
    for x in fnmr_list:
        k = _largest_k_at_most(x, N_gen)
        # the highest threshold (smallest index) with #{genuine < v} = N_gen - cg <= k
        i = int(np.flatnonzero(N_gen - cg <= k)[0])
        fmr_at.append(fmr[i])
        fnmr_thr.append(values[i])

    j = int(np.flatnonzero(n_imp)[0])  # the largest impostor score
    zero_fmr = 1.0 - (cg[j - 1] if j else 0) / N_gen
    g = int(np.flatnonzero(n_gen)[-1])  # the smallest genuine score
    zero_fnmr = float(fmr[g])
    # AUC: P(genuine > impostor) + P(tie) / 2, in integers
    below = N_imp - ci  # impostors strictly below each distinct value
    auc = float((n_gen * (2 * below + n_imp)).sum() / (2.0 * N_gen * N_imp))
    with np.errstate(invalid="ignore", over="ignore"):
        mg = float((values * n_gen).sum() / N_gen)
        mi = float((values * n_imp).sum() / N_imp)
        vg = float((n_gen * (values - mg) ** 2).sum() / N_gen)
        vi = float((n_imp * (values - mi) ** 2).sum() / N_imp)
        d_prime = abs(mg - mi) / np.sqrt(0.5 * (vg + vi)) if vg + vi > 0 else float("inf")
    e, t = eers[convention]
    costs = (p_target, c_miss, c_fa)
    min_dcf, min_dcf_thr = _cal.min_dcf_of_counts(values, n_gen, n_imp, *costs)
    cal = dict(cllr=_cal.cllr_of_counts(values, n_gen, n_imp),
               min_cllr=_cal.min_cllr_of_counts(values, n_gen, n_imp), min_dcf=min_dcf,
               min_dcf_threshold=min_dcf_thr,
               act_dcf=_cal.act_dcf_of_counts(values, n_gen, n_imp, *costs),
               dcf_costs=tuple(float(c) for c in costs))
    return VerificationResult(
        eer=e, eer_threshold=t, convention=convention, eers=eers, fmrs=tr.fars,
        fnmr_at_fmr=1.0 - tr.tar, fmr_threshold=tr.threshold, achieved_fmr=tr.achieved_far,
        fnmrs=np.asarray(fnmr_list), fmr_at_fnmr=np.asarray(fmr_at),
        fnmr_threshold=np.asarray(fnmr_thr), zero_fmr=float(zero_fmr), zero_fnmr=zero_fnmr,
        auc=auc, d_prime=float(d_prime), num_genuine=N_gen, num_impostor=N_imp,
        num_nonfinite=nonfinite, far_convention=far_convention, roc=(fmr, tar, values),
        det=(fmr, 1.0 - tar), **cal)


def _negate_thresholds(res: VerificationResult) -> VerificationResult:
    """The result of negated distances read back in distance units (thresholds negated)."""
    res.eer_threshold = -res.eer_threshold
    res.eers = {k: (e, -t) for k, (e, t) in res.eers.items()}
    res.fmr_threshold, res.fnmr_threshold = -res.fmr_threshold, -res.fnmr_threshold
    res.min_dcf_threshold = -res.min_dcf_threshold
    res.roc = (res.roc[0], res.roc[1], -res.roc[2])
    return res
