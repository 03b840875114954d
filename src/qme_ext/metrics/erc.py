"""Error versus reject curves (ERC) of a quality measure (issue 22).

An ERC shows how the verification error falls as the lowest-quality comparisons are
discarded: a good quality measure rejects the pairs the matcher gets wrong. Pair quality
is the minimum of the two samples' qualities (the convention of FaceImageQuality/SER-FIQ,
MagFace and CR-FIQA evaluations); with only probe qualities (the QME setting: the quality
estimator scores probes, gallery entries are enrolment-quality), the probe's quality is
the pair's. The error is FNMR at a target FMR. Two definitions are in use:

``threshold="fixed"`` (default; Grother & Tabassi, "Performance of biometric quality
measures", TPAMI 2007, the ERC of ISO/IEC 29794-1)
    the decision threshold is set once, on *all* impostor pairs, at the target FMR
    (``far_convention`` as in :func:`qme_ext.metrics.tar_at_far`), before anything is
    rejected; for each fraction r the ``int(r · N_gen)`` lowest-quality genuine pairs are
    discarded and FNMR = #{kept genuine < t} / #kept. The curve isolates what rejection
    does to the false non-matches of a deployed, fixed-threshold system.
``threshold="recomputed"`` (the ERC scripts distributed with MagFace and CR-FIQA: their
loop drops the ``int(r · N)`` lowest-quality pairs of *all* pairs, genuine and impostor,
then derives the FMR threshold again from the kept impostors)
    FNMR at the target FMR of the kept pairs; needs impostor qualities. The FMR stays at
    its target but the threshold moves, so the curve mixes the effect on both error types.

Ties in quality are broken by pair order (a stable sort), so the result is
deterministic. NaN scores take the minimum finite score, as everywhere in qme_ext; NaN
qualities are refused. ``auc`` is the trapezoidal area under FNMR over the rejected
fractions given (the "pAUC" the quality papers report when the grid stops early).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..ops.inputs import as_ids, check_device
from .core import tar_at_far

DEFINITIONS = ("fixed", "recomputed")
DEFAULT_REJECTION = tuple(round(0.05 * i, 2) for i in range(20))  # 0, 0.05, ..., 0.95

__all__ = ["erc", "erc_pairs", "ErcResult", "DEFINITIONS", "DEFAULT_REJECTION"]


@dataclass
class ErcResult:
    """FNMR (fractions) at each rejected fraction of one quality measure."""

    rejected: np.ndarray  # (R,) requested fractions of pairs discarded
    fnmr: np.ndarray  # (R,) NaN where no genuine pair is left
    threshold: np.ndarray  # (R,) decision thresholds (all equal for "fixed")
    num_genuine: np.ndarray  # (R,) genuine pairs kept
    fmr: float  # the target FMR
    definition: str  # "fixed" or "recomputed"
    auc: float  # trapezoidal area under fnmr(rejected)

    def __getitem__(self, key):
        return getattr(self, key)

    def as_dict(self) -> dict:
        """{"rejected": [...], "fnmr": [...], ...} for JSON."""
        return {"rejected": self.rejected.tolist(), "fnmr": self.fnmr.tolist(),
                "threshold": self.threshold.tolist(), "num_genuine": self.num_genuine.tolist(),
                "fmr": self.fmr, "definition": self.definition, "auc": self.auc}


def _vector(x, name: str, n: Optional[int] = None) -> np.ndarray:
    """(N,) float64 copy of a real vector; TypeError naming ``name`` for complex, string,
    object or other non-numeric values (never a silently dropped imaginary part)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name}: expected real numbers, got {x.dtype}")
        v = x.detach().cpu().numpy()
    else:
        try:
            v = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a vector of real numbers ({exc})") from None
    if v.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real numbers, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False).reshape(-1)
    if n is not None and v.size != n:
        raise ValueError(f"{name}: expected {n} values (one per pair), got {v.size}")
    return v


def _threshold(gen: np.ndarray, imp: np.ndarray, fmr: float, far_convention: str) -> float:
    """The FMR threshold of the impostor scores (the genuine ones only mark the row)."""
    S = torch.from_numpy(np.concatenate([gen[:1], imp])).reshape(1, -1)
    labels = torch.zeros(S.shape[1], dtype=torch.int64)
    labels[0] = 1
    one = torch.ones(1, dtype=torch.int64)
    return float(tar_at_far(S, one, labels, [fmr], convention=far_convention).threshold[0])


def erc_pairs(genuine, impostor, genuine_quality, impostor_quality=None, fmr: float = 1e-3,
              rejection: Sequence[float] = DEFAULT_REJECTION, threshold: str = "fixed",
              far_convention: str = "qme") -> ErcResult:
    """ERC of genuine scores (Ng,) and impostor scores (Ni,) with pair qualities
    ``genuine_quality`` (Ng,) and ``impostor_quality`` (Ni,) (higher = better; needed by
    ``threshold="recomputed"`` only). ``rejection``: fractions in [0, 1); ``fmr``: target
    FMR in (0, 1]. See the module docstring for the two definitions."""
    if threshold not in DEFINITIONS:
        raise ValueError(f"threshold: expected one of {list(DEFINITIONS)}, got {threshold!r}")
    if isinstance(fmr, (bool, np.bool_)) or not isinstance(fmr, (int, float, np.integer,
                                                                  np.floating)) \
            or not 0.0 < float(fmr) <= 1.0:
        raise ValueError(f"fmr: expected a rate in (0, 1], got {fmr!r}")
    rej = _vector(rejection, "rejection")
    if rej.size == 0 or not np.all((rej >= 0) & (rej < 1)):
        raise ValueError(f"rejection: expected fractions in [0, 1), got {rejection!r}")
    gen, imp = _vector(genuine, "genuine"), _vector(impostor, "impostor")
    if gen.size == 0 or imp.size == 0:
        raise ValueError("genuine/impostor: need at least one score of each")
    gq = _vector(genuine_quality, "genuine_quality", gen.size)
    iq = None if impostor_quality is None else _vector(impostor_quality, "impostor_quality",
                                                       imp.size)
    for name, q in (("genuine_quality", gq), ("impostor_quality", iq)):
        if q is not None and np.isnan(q).any():
            raise ValueError(f"{name}: NaN quality values")
    if threshold == "recomputed" and iq is None:
        raise ValueError("impostor_quality: threshold='recomputed' rejects impostor pairs too "
                         "and needs their quality")
    both = np.concatenate([gen, imp])
    if not np.isfinite(both).any():
        raise ValueError(f"genuine/impostor: no finite score (all {both.size} are NaN or "
                         "+-inf); nothing can be measured")
    if np.isnan(both).any():  # NaN -> the minimum finite score (docs/definitions.rst, §2.2)
        finite = both[np.isfinite(both)]
        low = finite.min() if finite.size else 0.0
        gen, imp = np.where(np.isnan(gen), low, gen), np.where(np.isnan(imp), low, imp)
    fnmr, thr, kept = [], [], []
    if threshold == "fixed":
        t = _threshold(gen, imp, fmr, far_convention)
        by_quality = gen[np.argsort(gq, kind="stable")]
        for r in rej:
            g = by_quality[int(r * gen.size):]
            fnmr.append(np.mean(g < t) if g.size else np.nan)
            thr.append(t)
            kept.append(g.size)
    else:
        q = np.concatenate([gq, iq])
        order = np.argsort(q, kind="stable")
        is_gen = np.concatenate([np.ones(gen.size, bool), np.zeros(imp.size, bool)])[order]
        s = np.concatenate([gen, imp])[order]
        for r in rej:
            keep = slice(int(r * s.size), None)
            g, i = s[keep][is_gen[keep]], s[keep][~is_gen[keep]]
            if g.size == 0 or i.size == 0:
                fnmr.append(np.nan)
                thr.append(np.nan)
            else:
                t = _threshold(g, i, fmr, far_convention)
                fnmr.append(np.mean(g < t))
                thr.append(t)
            kept.append(g.size)
    fnmr = np.asarray(fnmr, dtype=np.float64)
    ok = ~np.isnan(fnmr)
    x, y = rej[ok], fnmr[ok]
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)) if x.size > 1 else 0.0
    return ErcResult(rej, fnmr, np.asarray(thr, dtype=np.float64),
                     np.asarray(kept, dtype=np.int64), float(fmr), threshold, auc)


def erc(scores, q_pids, g_pids, q_quality, g_quality=None, **options) -> ErcResult:
    """ERC of a (P, G) score matrix (higher = more alike) with per-probe qualities
    ``q_quality`` (P,) or (P, 1) and optional per-gallery qualities ``g_quality`` (G,):
    pair quality min(q_p, g_g), or q_p without gallery qualities. Genuine pairs share the
    pid; every pair is used (O(P·G) memory). ``options`` as :func:`erc_pairs`."""
    if isinstance(scores, torch.Tensor):
        check_device(scores, "scores")  # a 'meta' tensor has no data to copy
    S = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if S.ndim != 2:
        raise ValueError(f"scores: expected a (P, G) matrix, got shape {S.shape}")
    P, G = S.shape
    if S.dtype.kind not in "biuf":
        raise TypeError(f"scores: expected real scores, got dtype {S.dtype}")
    if S.size and not np.isfinite(S).any():
        raise ValueError(f"scores: no finite score (all {P} x {G} entries are NaN or +-inf); "
                         "nothing can be measured")
    cpu = torch.device("cpu")  # ids as integers: 2**53 and 2**53 + 1 are two subjects
    qp, gp = as_ids(q_pids, "q_pids", P, cpu).numpy(), as_ids(g_pids, "g_pids", G, cpu).numpy()
    qq = _vector(q_quality, "q_quality", P)
    pair_q = np.repeat(qq[:, None], G, axis=1)
    if g_quality is not None:
        pair_q = np.minimum(pair_q, _vector(g_quality, "g_quality", G)[None, :])
    gen = qp[:, None] == gp[None, :]
    return erc_pairs(S[gen], S[~gen], pair_q[gen], pair_q[~gen], **options)
