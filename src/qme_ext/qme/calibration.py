"""One score scale for every probe: per-stratum offsets fitted on the training open-set searches.

The open-set threshold at 1% FPIR is an upper order statistic of the non-mated searches'
maxima. When the fused scores of one kind of probe (no face, or poor faces: the gate moves the
weight to body and gait) sit on a higher scale, those probes set the threshold and every other
probe's mated search pays for it (issue 19: FNIR 21.85% against 8-10% for the baselines).

Strata: the probe's **missing pattern** (which models are absent, :mod:`.missing`) and, while
the quality model is present, its **quality quartile** (edges: the quartiles of the training
probes' quality ``q``).

Every training probe makes two open-set searches against the training centres: its mated
search, whose best genuine score is a positive, and its leave-subject-out search, whose best
impostor score (over other subjects' centres) is a negative. A class-balanced logistic
regression with one slope ``a`` and one intercept per stratum, ``logit = a F + b + d_s``
(ridge ``l2`` on the deviations ``d_s``, so a small stratum stays near the common intercept),
turns the fused score into the log-odds that a search's best score is a mate, given the
stratum. The offset ``o_s = d_s / a`` adds to every score of the probe, so thresholding the
offset scores is thresholding those log-odds: a stratum whose impostor maxima run high
without its mates running higher (the face-less probes above) moves down and no longer sets
the threshold. A stratum never seen in training gets no offset; with ``a <= 0`` (no
separation at all) no stratum gets one. The offset is the same for every column of a probe,
so ranks, Rank-k and mAP are unchanged; only where the probe's scores sit against a global
threshold (TAR@FAR, FNIR@FPIR) moves. :func:`tail_statistics` measures the result per stratum.

``method="tails"`` instead aligns the impostor tails themselves: ``o_s = n_s / (n_s + 8) *
(median of all probes' impostor maxima - median of stratum s's)``, so that the median of the
per-probe impostor maxima, and with it the upper tail, is the same in every stratum. That is
one scale in the strict sense, but not always the better open-set rule: when a stratum's mates
are weak (no face), lifting its scores to the common tail also lets its impostors set the
threshold (dev seed 100, mixed regime with score drift: test FNIR@1%FPIR 23.8% with the
"tails" offsets, 20.5% with "log-odds", 19.0% with none). The robust recipe fits both and
keeps, of none / log-odds / tails, the one with the best leave-subject-out validation
criterion (:func:`qme_ext.qme.train.fit_qme`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["StratumOffsets", "strata_of", "tail_statistics"]

L2 = 1e-3   # ridge on the per-stratum intercepts, per unit of the balanced loss
SHRINK = 8.0  # "tails": a stratum of n probes gets n / (n + SHRINK) of its offset
METHODS = ("log-odds", "tails")


def _pattern(absent: np.ndarray) -> np.ndarray:
    """(P,) int64 bit pattern of the absent models ((P, K) bool)."""
    a = np.asarray(absent, dtype=bool)
    return (a.astype(np.int64) << np.arange(a.shape[1], dtype=np.int64)).sum(axis=1)


def strata_of(q: np.ndarray, absent: np.ndarray, edges: np.ndarray,
              quality_index: Optional[int]) -> np.ndarray:
    """(P,) int64 stratum key: missing pattern * 8 + quality quartile (0-3), the quartile
    only while the quality model (``quality_index``) is present, else 0."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    pattern = _pattern(absent)
    quart = np.searchsorted(np.asarray(edges, dtype=np.float64), q, side="right")
    if quality_index is None:
        quart = np.zeros_like(quart)
    else:
        quart = np.where(np.asarray(absent)[:, quality_index], 0, quart)
    return pattern * 8 + quart


class StratumOffsets:
    """Per-stratum additive offsets of the fused score (module docstring)."""

    def __init__(self, edges, keys, offsets, quality_index: Optional[int]):
        self.edges = np.asarray(edges, dtype=np.float64)          # (3,) quality quartiles
        self.keys = np.asarray(keys, dtype=np.int64)              # (T,) stratum keys
        self.offsets = np.asarray(offsets, dtype=np.float64)      # (T,)
        self.quality_index = None if quality_index is None else int(quality_index)

    @classmethod
    def fit(cls, genuine_max: np.ndarray, impostor_max: np.ndarray, q: np.ndarray,
            absent: np.ndarray, quality_index: Optional[int], method: str = "log-odds",
            l2: float = L2, shrink: float = SHRINK) -> "StratumOffsets":
        """genuine_max (P,) best genuine and impostor_max (P,) best impostor training score
        of each probe (non-finite: no such search), q (P,), absent (P, K) bool; ``method``
        "log-odds" or "tails" (module docstring)."""
        import torch

        from .warm_start import _balanced_logistic
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        gen = np.asarray(genuine_max, dtype=np.float64)
        imp = np.asarray(impostor_max, dtype=np.float64)
        present = np.ones(gen.shape[0], dtype=bool)
        if quality_index is not None:
            present &= ~np.asarray(absent)[:, quality_index]
        qq = np.asarray(q, dtype=np.float64)[present]
        edges = np.quantile(qq, [0.25, 0.5, 0.75]) if qq.size else np.full(3, np.inf)
        strata = strata_of(q, absent, edges, quality_index)
        ok_g, ok_i = np.isfinite(gen), np.isfinite(imp)
        if not ok_g.any() or not ok_i.any():
            return cls(edges, [], [], quality_index)
        if method == "tails":
            target = np.median(imp[ok_i])
            keys = np.unique(strata[ok_i])
            offs = []
            for key in keys:
                sel = ok_i & (strata == key)
                n = int(sel.sum())
                offs.append(n / (n + shrink) * (target - np.median(imp[sel])))
            return cls(edges, keys, offs, quality_index)
        score = np.concatenate([gen[ok_g], imp[ok_i]])
        label = np.concatenate([np.ones(ok_g.sum()), np.zeros(ok_i.sum())])
        st = np.concatenate([strata[ok_g], strata[ok_i]])
        keys = np.unique(st)
        centre, scale = score.mean(), max(score.std(), 1e-12)
        onehot = (st[:, None] == keys[None, :]).astype(np.float64)
        feats = np.concatenate([onehot, ((score - centre) / scale)[:, None],
                                np.ones((score.size, 1))], axis=1)
        params, _ = _balanced_logistic(torch.as_tensor(feats), torch.as_tensor(label), l2,
                                       200, n_free=2)
        slope = params[-2] / scale
        if not slope > 0:
            return cls(edges, [], [], quality_index)
        return cls(edges, keys, params[:-2] / slope, quality_index)

    def offset(self, q: np.ndarray, absent: np.ndarray) -> np.ndarray:
        """(P,) float64 offset of each probe (0 for strata unseen in training)."""
        strata = strata_of(q, absent, self.edges, self.quality_index)
        out = np.zeros(strata.shape[0])
        for key, off in zip(self.keys, self.offsets):
            out[strata == key] = off
        return out

    def as_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "keys": self.keys.tolist(),
                "offsets": self.offsets.tolist(), "quality_index": self.quality_index}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["StratumOffsets"]:
        if not d:
            return None
        return cls(d["edges"], d["keys"], d["offsets"], d.get("quality_index"))


def tail_statistics(scores: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    groups: dict) -> dict:
    """Upper tail of the impostor scores per group of probes.

    scores (P, G); groups {name: (P,) bool}. Returns {name: dict(p99, p999, max_median, n)}:
    the 99th and 99.9th percentiles of the group's impostor scores and the median of its
    probes' impostor maxima.
    """
    from .openset import impostor_maxima
    s = np.asarray(scores, dtype=np.float64)
    imp = np.asarray(q_pids).reshape(-1, 1) != np.asarray(g_pids).reshape(1, -1)
    mx = impostor_maxima(s, q_pids, g_pids)
    out = {}
    for name, sel in groups.items():
        sel = np.asarray(sel, dtype=bool)
        vals = s[sel][imp[sel]]
        if vals.size == 0:
            continue
        out[name] = {"p99": float(np.quantile(vals, 0.99)),
                     "p999": float(np.quantile(vals, 0.999)),
                     "max_median": float(np.median(mx[sel])), "n": int(sel.sum())}
    return out
