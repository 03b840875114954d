"""Literal reference of the QMagFace fit (SPEC 5, seeds/qmagface-notes.md).

A full ROC per omega (every distinct score is a threshold, descending; a pair is
accepted when score >= threshold; the first point is the all-reject point at +inf,
like sklearn's roc_curve >= 1.3 with drop_intermediate=False -- dropping collinear
points only matters with tied scores), the FPR < FMR mask, argmin of FNMR, argmin
over omegas, and the closed-form least squares line. Slow, obvious, for tests.
"""
from __future__ import annotations

import numpy as np


def _roc(y: np.ndarray, scores: np.ndarray):
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tps = np.cumsum(yy)[last]
    fps = np.cumsum(~yy)[last]
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    thr = np.r_[np.inf, s[last]]
    return fps / fps[-1], tps / tps[-1], thr


def qmagface_fit_reference(features, pairs, labels, threshold_space="sigmoid", fmrs=None,
                           n_omega=20, max_ratio=0.5):
    """(alpha, beta, thresholds, omega_opt) by the literal published algorithm."""
    f = np.asarray(features, dtype=np.float64)
    pairs = np.asarray(pairs)
    y = np.asarray(labels).astype(bool)
    norms = np.linalg.norm(f, axis=1)
    fn = f / norms[:, None]
    s = np.sum(fn[pairs[:, 0]] * fn[pairs[:, 1]], axis=1)
    q = np.minimum(norms[pairs[:, 0]], norms[pairs[:, 1]])
    fmrs = np.logspace(-5, -2, 50) if fmrs is None else np.asarray(fmrs, dtype=np.float64)
    w_max = max_ratio / np.max(q)
    omegas = np.linspace(-w_max, w_max, n_omega)
    tmp_thr = np.zeros((n_omega, len(fmrs)))
    tmp_fnmr = np.zeros((n_omega, len(fmrs)))
    for i, w in enumerate(omegas):
        x = w * q + s
        scores = 1.0 / (1.0 + np.exp(-x)) if threshold_space == "sigmoid" else x
        fpr, tpr, thr = _roc(y, scores)
        for j, fmr in enumerate(fmrs):
            fnmr = 1 - tpr[fpr < fmr]
            k = np.argmin(fnmr)
            tmp_thr[i, j] = thr[k]
            tmp_fnmr[i, j] = fnmr[k]
    best = np.argmin(tmp_fnmr, axis=0)
    ts = tmp_thr[best, np.arange(len(fmrs))]
    om = omegas[best]
    ok = np.isfinite(ts)
    t, w = ts[ok], om[ok]
    m = np.sum((t - t.mean()) * (w - w.mean())) / np.sum((t - t.mean()) ** 2)
    b = w.mean() - m * t.mean()
    return -b, m, ts, om
