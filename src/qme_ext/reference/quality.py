"""Literal references of the quality ops (docs/definitions.rst, §5): the QMagFace score, the batched
template aggregation, and the QMagFace fit (seeds/qmagface-notes.md).

The fit:

A full ROC per omega (every distinct score is a threshold, descending; a pair is
accepted when score >= threshold; the first point is the all-reject point at +inf,
like sklearn's roc_curve >= 1.3 with drop_intermediate=False -- dropping collinear
points only matters with tied scores), the FPR < FMR mask, argmin of FNMR, argmin
over omegas, and the closed-form least squares line. Slow, obvious, for tests.
"""
from __future__ import annotations

import numpy as np
import torch


def qmagface_score_ref(f1: torch.Tensor, f2: torch.Tensor, alpha: float,
                       beta: float) -> torch.Tensor:
    """QMagFace score of row-aligned raw embeddings f1, f2 (n, D) -> (n,), in their dtype.

    s = cos(f1, f2); q = min(|f1|, |f2|); score = s + min(0, beta * s - alpha) * q.
    """
    n1, n2 = f1.norm(dim=1), f2.norm(dim=1)
    s = (f1 * f2).sum(1) / (n1 * n2)
    return s + torch.clamp(beta * s - alpha, max=0) * torch.minimum(n1, n2)


def qmagface_score_matrix_ref(probe: torch.Tensor, gallery: torch.Tensor, alpha: float,
                              beta: float) -> torch.Tensor:
    """(P, D) x (G, D) raw embeddings -> (P, G) QMagFace scores: one matmul of the
    normalised features, then the epilogue in eager PyTorch (the baseline of the fused op)."""
    n_p, n_g = probe.norm(dim=1), gallery.norm(dim=1)
    cos = (probe / n_p[:, None]) @ (gallery / n_g[:, None]).T
    q = torch.minimum(n_p[:, None], n_g[None, :])
    return cos + torch.clamp(beta * cos - alpha, max=0) * q


def template_aggregate_ref(features: torch.Tensor, weights: torch.Tensor,
                           offsets: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Templates (T, D) in the weights' dtype: u_t = sum w f / sum w over the rows
    offsets[t]:offsets[t+1] of features (N, D); L2-normalised when `normalize`. A segment
    that is empty or weighs 0 gives a zero template (so does a zero u when normalising)."""
    f = features.to(weights.dtype)
    T = offsets.numel() - 1
    seg = torch.repeat_interleave(torch.arange(T, device=f.device), torch.diff(offsets))
    num = torch.zeros(T, f.shape[1], dtype=f.dtype, device=f.device).index_add_(
        0, seg, weights[:, None] * f)
    den = torch.zeros(T, dtype=f.dtype, device=f.device).index_add_(0, seg, weights)
    u = torch.where(den[:, None] != 0, num / torch.where(den == 0, 1, den)[:, None], 0)
    if normalize:
        norm = u.norm(dim=1, keepdim=True)
        u = torch.where(norm > 0, u / torch.where(norm == 0, 1, norm), 0)
    return u


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
