"""QMagFace quality-aware comparison scores (docs/definitions.rst, §5, seeds/qmagface-notes.md).

score(s, q1, q2) = s + omega(s) * min(q1, q2),  omega(s) = min(0, beta*s - alpha),
with s the cosine of the normalised embeddings and q = ||f|| the MagFace quality
(raw embedding norm, unitless). ``fit`` learns (alpha, beta) with the published
algorithm, using exact order statistics instead of a full ROC per omega.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

PUBLISHED = {  # (alpha, beta), docs/definitions.rst, §5
    "magface-r100": (0.077428, 0.125926),
    "magface-r50": (0.065984, 0.103799),
    "magface-r18": (0.092861, 0.135311),
}
_FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def pair_cosine_quality(f1, f2) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, q) float64 for row-aligned raw embeddings f1, f2 of shape (N, D)."""
    f1 = torch.as_tensor(f1).double()
    f2 = torch.as_tensor(f2).double()
    n1, n2 = f1.norm(dim=1), f2.norm(dim=1)
    s = ((f1 / n1[:, None]) * (f2 / n2[:, None])).sum(1)
    return s, torch.minimum(n1, n2)


def _omega_scores(s: torch.Tensor, q: torch.Tensor, omega: float, space: str) -> torch.Tensor:
    x = omega * q + s
    return torch.sigmoid(x) if space == "sigmoid" else x


def _max_impostors_allowed(fmr: float, n_imp: int) -> int:
    """Largest k with k / n_imp < fmr (the strict FPR < FMR filter, float64 like sklearn)."""
    k = max(int(math.ceil(fmr * n_imp)) - 1, 0)
    while k + 1 <= n_imp and (k + 1) / n_imp < fmr:
        k += 1
    while k > 0 and k / n_imp >= fmr:
        k -= 1
    return k


def operating_points(gen: torch.Tensor, imp: torch.Tensor, fmrs: Sequence[float]):
    """Per FMR: (threshold, number of accepted genuines) of the ROC point with FPR < FMR and
    minimum FNMR, the highest such threshold on ties (the first point of a descending ROC).

    Order statistics only: v = the (k+1)-th largest impostor score with k the allowed
    impostor count; admissible thresholds are > v, the best one is the smallest genuine
    score above v (+inf, i.e. the all-reject point, when no genuine is above v).
    """
    n_imp = imp.numel()
    ks = [_max_impostors_allowed(f, n_imp) for f in fmrs]
    kmax = min(max(ks) + 1, n_imp)
    top = torch.topk(imp, kmax, sorted=True).values if kmax > 0 else imp.new_empty(0)
    gen_sorted = torch.sort(gen).values
    ng = gen_sorted.numel()
    ks_t = torch.tensor(ks, dtype=torch.int64)
    v = torch.full((len(ks),), -math.inf, dtype=gen_sorted.dtype)
    inside = ks_t < n_imp  # k >= n_imp: every impostor allowed, every point qualifies
    v[inside] = top.cpu()[ks_t[inside]].to(v.dtype)
    gs = gen_sorted.cpu()
    pos = torch.searchsorted(gs, v, right=True)
    tp = ng - pos
    thr = torch.where(tp > 0, gs[pos.clamp(max=max(ng - 1, 0))],
                      torch.full_like(v, math.inf))
    return thr.numpy().astype(np.float64), tp.numpy().astype(np.int64)


class QMagFace:
    """Quality-aware scoring on raw MagFace embeddings.

    ``QMagFace(alpha, beta)`` or ``QMagFace("magface-r100" | "magface-r50" | "magface-r18")``
    (published parameters); ``fit`` learns them from labelled pairs.
    """

    def __init__(self, alpha=None, beta: Optional[float] = None):
        if isinstance(alpha, str):
            key = alpha.lower()
            if key not in PUBLISHED:
                raise ValueError(f"unknown model {alpha!r}; expected one of {sorted(PUBLISHED)}")
            alpha, beta = PUBLISHED[key]
        self.alpha = None if alpha is None else float(alpha)
        self.beta = None if beta is None else float(beta)

    def _params(self):
        if self.alpha is None or self.beta is None:
            raise RuntimeError("QMagFace: alpha/beta unset; pass them or call fit() first")
        return self.alpha, self.beta

    @staticmethod
    def adjust(s, q, alpha: float, beta: float):
        """omega(s) * q + s for tensors s (cosines) and q (min qualities)."""
        return torch.clamp(beta * s - alpha, max=0.0) * q + s

    def score_pairs(self, f1, f2) -> torch.Tensor:
        """(N,) float64 quality-aware scores of row-aligned raw embeddings (N, D)."""
        a, b = self._params()
        s, q = pair_cosine_quality(f1, f2)
        return self.adjust(s, q, a, b)

    def score_matrix(self, probe_feats, gallery_feats, block: tuple[int, int] = (1024, 8192),
                     out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """(P, G) quality-aware score matrix of raw embeddings (P, D) x (G, D).

        Tile by tile: normalised features of a (bp, bg) tile are multiplied (in the
        feature dtype, float32 accumulation on tensor cores), and the QMagFace
        epilogue (``qme_ext::qmagface_epilogue``) immediately rewrites that tile into
        the output while it is cache/L2 resident: no second pass over P x G.
        ``out_dtype`` defaults to float32 (float64 for float64 features).
        """
        from ..ops.quality import qmagface_epilogue

        a, b = self._params()
        pf, gf = torch.as_tensor(probe_feats), torch.as_tensor(gallery_feats)
        if pf.dim() != 2 or gf.dim() != 2 or pf.shape[1] != gf.shape[1]:
            raise ValueError(f"score_matrix: expected (P, D) and (G, D), got {tuple(pf.shape)} "
                             f"and {tuple(gf.shape)}")
        if pf.dtype not in _FEATURE_DTYPES or gf.dtype != pf.dtype:
            raise ValueError(f"score_matrix: features must share a float dtype, got {pf.dtype}, "
                             f"{gf.dtype}")
        if gf.device != pf.device:
            raise ValueError("score_matrix: probe and gallery features on different devices")
        if out_dtype is None:
            out_dtype = torch.float64 if pf.dtype == torch.float64 else torch.float32
        # Norms and normalisation in float32 (float64 for float64 input): low-precision
        # storage must not limit the quality value; the matmul then runs in the input dtype.
        acc = torch.float64 if pf.dtype == torch.float64 else torch.float32
        qp, qg = pf.to(acc).norm(dim=1), gf.to(acc).norm(dim=1)
        pn = (pf.to(acc) / qp[:, None]).to(pf.dtype)
        gn = (gf.to(acc) / qg[:, None]).to(gf.dtype)
        qp, qg = qp.double(), qg.double()
        P, G = pf.shape[0], gf.shape[0]
        out = torch.empty((P, G), dtype=out_dtype, device=pf.device)
        bp, bg = block
        for i in range(0, P, bp):
            pi = pn[i:i + bp]
            for j in range(0, G, bg):
                tile = pi @ gn[j:j + bg].T  # scratch tile, freed right after the epilogue
                qmagface_epilogue(tile, qp[i:i + bp], qg[j:j + bg], a, b,
                                  out[i:i + bp, j:j + bg])
        return out

    def fit(self, features, pairs, labels, threshold_space: str = "sigmoid",
            fmrs: Optional[Sequence[float]] = None, n_omega: int = 20, max_ratio: float = 0.5):
        """Learn (alpha, beta) from labelled pairs (docs/definitions.rst, §5; literal version:
        ``qme_ext.reference.quality.qmagface_fit_reference``).

        features (n_feat, D) raw embeddings; pairs (n, 2) int row indices; labels (n,)
        1 = genuine. For each omega in linspace(-w_max, w_max, n_omega), w_max =
        max_ratio / max q, scores x = omega*q + s (sigmoid(x) in "sigmoid" space); per
        FMR (default 50 log-spaced in [1e-5, 1e-2]) the ROC point with FPR < FMR and
        lowest FNMR (highest threshold on ties); per FMR the omega with the lowest FNMR
        (first on ties); least squares omega_opt = m t + b, beta = m, alpha = -b.
        FMRs whose best point is the all-reject one (t = +inf) are left out of the fit
        (warned). Returns self.
        """
        if threshold_space not in ("sigmoid", "raw"):
            raise ValueError("threshold_space: expected 'sigmoid' or 'raw'")
        ts, omega_opt = qmagface_thresholds_omegas(features, pairs, labels, threshold_space,
                                                   fmrs, n_omega, max_ratio)
        self.beta, b = fit_line(ts, omega_opt)
        self.alpha = -b
        return self


def default_fmrs():
    return np.logspace(-5, -2, 50)


def _pairs_s_q(features, pairs, labels):
    f = torch.as_tensor(features).double()
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.int64)
    y = torch.as_tensor(np.asarray(labels)).bool()
    if pairs.dim() != 2 or pairs.shape[1] != 2 or y.shape != (pairs.shape[0],):
        raise ValueError("fit: pairs must be (n, 2) and labels (n,)")
    if not bool(y.any()) or bool(y.all()):
        raise ValueError("fit: need both genuine and impostor pairs")
    q_all = f.norm(dim=1)
    fn = f / q_all[:, None]
    s = (fn[pairs[:, 0]] * fn[pairs[:, 1]]).sum(1)
    q = torch.minimum(q_all[pairs[:, 0]], q_all[pairs[:, 1]])
    return s, q, y


def qmagface_thresholds_omegas(features, pairs, labels, threshold_space="sigmoid", fmrs=None,
                               n_omega=20, max_ratio=0.5):
    """(thresholds (n_fmr,), omega_opt (n_fmr,)) of the QMagFace fit (engine version)."""
    s, q, y = _pairs_s_q(features, pairs, labels)
    fmrs = default_fmrs() if fmrs is None else np.asarray(fmrs, dtype=np.float64)
    omegas = np.linspace(-max_ratio / float(q.max()), max_ratio / float(q.max()), n_omega)
    thr = np.zeros((n_omega, len(fmrs)))
    tp = np.zeros((n_omega, len(fmrs)), dtype=np.int64)
    for i, w in enumerate(omegas):
        x = _omega_scores(s, q, float(w), threshold_space)
        thr[i], tp[i] = operating_points(x[y], x[~y], fmrs)
    best = np.argmax(tp, axis=0)  # lowest FNMR = most accepted genuines; first on ties
    cols = np.arange(len(fmrs))
    return thr[best, cols], omegas[best]


def fit_line(ts, omegas) -> tuple[float, float]:
    """Least squares omega = m t + b over the finite thresholds; returns (m, b)."""
    ts, omegas = np.asarray(ts, dtype=np.float64), np.asarray(omegas, dtype=np.float64)
    ok = np.isfinite(ts)
    if not ok.all():
        warnings.warn(f"QMagFace.fit: {int((~ok).sum())} FMR(s) admit no genuine pair "
                      "(threshold +inf); left out of the line fit", RuntimeWarning)
    ts, omegas = ts[ok], omegas[ok]
    if ts.size < 2 or np.ptp(ts) == 0:
        raise ValueError("QMagFace.fit: fewer than two distinct finite thresholds to fit")
    tm, wm = ts.mean(), omegas.mean()
    m = float(((ts - tm) * (omegas - wm)).sum() / ((ts - tm) ** 2).sum())
    return m, float(wm - m * tm)
