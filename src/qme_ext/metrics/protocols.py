"""Evaluation protocols of the ReID literature beyond the single-query default.

* :func:`multi_query` -- multi-query evaluation (Zheng et al., "Scalable Person
  Re-identification: A Benchmark", ICCV 2015, Market-1501; the same pooling is reported
  for MARS and DukeMTMC-VideoReID): the probes of one subject seen by one camera form
  one query, its scores the max or the mean of theirs. Then ranked like any matrix
  (:func:`qme_ext.metrics.rank_metrics`).
* :func:`single_gallery_shot` -- the CUHK03 single-gallery-shot protocol (Li et al.,
  "DeepReID", CVPR 2014), as open-reid (``cmc(..., single_gallery_shot=True)``) and
  deep-person-reid (``eval_cuhk03``) evaluate it: for every probe, junk removed first,
  one entry per gallery subject is drawn at random, the CMC is read on that single-shot
  gallery, and this is repeated; here the mean and the spread over the repeats are
  reported, with a fixed seed.

Layer: ``metrics`` (imports ``ops`` and ``metrics.core``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch

from ..ops.inputs import as_count, as_ids, as_score_matrix, check_seed, require_finite_score
from ..ops.keys import keys64
from .core import RankResult, _check_max_rank, rank_metrics

__all__ = ["MultiQuery", "multi_query", "multi_query_metrics", "SingleShotResult",
           "single_gallery_shot"]

REDUCTIONS = ("max", "mean")


class MultiQuery(NamedTuple):
    """Pooled probes: ``scores`` (Q, G) float64 (numpy or a tensor, like the input), the
    ids of each pooled query (Q,) int64 numpy, and ``groups`` (P,): the pooled query of
    every original probe."""

    scores: "np.ndarray | torch.Tensor"
    q_pids: np.ndarray
    q_camids: np.ndarray
    q_clothes: Optional[np.ndarray]
    groups: np.ndarray


def multi_query(scores, q_pids, q_camids, q_clothes=None, reduce: str = "max") -> MultiQuery:
    """Pool the probes of each (subject, camera) -- and clothes, when given -- into one
    query whose score with each gallery entry is the max or mean of theirs.

    scores: (P, G) similarities (numpy or torch, CPU or CUDA); q_pids, q_camids
    (and q_clothes): (P,) integer ids. Pooled queries are ordered by (pid, camera,
    clothes). Score pooling is the score-level form of the paper's feature pooling: the
    mean of dot-product scores equals the score of the mean feature; ``max`` keeps each
    gallery entry's best match among the subject's probes. A NaN score ("no score") is
    left out of a pool; a pool with only NaN stays NaN.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    is_numpy = isinstance(scores, np.ndarray)
    S = as_score_matrix(scores, "scores")
    P, _ = S.shape
    cpu = torch.device("cpu")
    cols = [as_ids(q_pids, "q_pids", P, cpu).numpy(), as_ids(q_camids, "q_camids", P, cpu).numpy()]
    if q_clothes is not None:
        cols.append(as_ids(q_clothes, "q_clothes", P, cpu).numpy())
    keys, groups = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    # member j of every pool is added at step j (probe order): a fixed order on every
    # device, no atomics
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    Q, G = keys.shape[0], S.shape[1]
    counts = torch.zeros((Q, G), dtype=torch.float64, device=S.device)
    pooled = torch.full((Q, G), -torch.inf if reduce == "max" else 0.0, dtype=torch.float64,
                        device=S.device)
    for j in range(int(sizes.max())):
        have = np.flatnonzero(sizes > j)
        rows = S[torch.as_tensor(order[starts[have] + j], device=S.device)].to(torch.float64)
        nan = torch.isnan(rows)
        sel = torch.as_tensor(have, device=S.device)
        counts[sel] += (~nan).to(torch.float64)
        if reduce == "max":
            pooled[sel] = torch.maximum(pooled[sel], rows.masked_fill(nan, -torch.inf))
        else:
            pooled[sel] += rows.masked_fill(nan, 0.0)
    if reduce == "mean":
        pooled = pooled / counts.clamp_min(1.0)
    pooled = pooled.masked_fill(counts == 0, torch.nan)
    return MultiQuery(pooled.cpu().numpy() if is_numpy else pooled, keys[:, 0], keys[:, 1],
                      keys[:, 2] if q_clothes is not None else None, groups)


def multi_query_metrics(scores, q_pids, g_pids, q_camids, g_camids, q_clothes=None,
                        g_clothes=None, reduce: str = "max", mode: str = "general",
                        max_rank: int = 20, **rank_kwargs) -> RankResult:
    """:func:`rank_metrics` of the multi-query pooled matrix (:func:`multi_query`); the
    counts (``num_valid``, per-probe arrays) are per pooled query."""
    mq = multi_query(scores, q_pids, q_camids, q_clothes, reduce)
    return rank_metrics(mq.scores, mq.q_pids, g_pids, mq.q_camids, g_camids, mq.q_clothes,
                        g_clothes, mode=mode, max_rank=max_rank, **rank_kwargs)


@dataclass
class SingleShotResult:
    """CUHK03 single-gallery-shot result: means over the repeats and their spread
    (standard deviation, ddof = 1; 0 for one repeat). Fractions in [0, 1]."""

    cmc: np.ndarray  # (max_rank,) mean over repeats of the CMC
    cmc_std: np.ndarray  # (max_rank,)
    mAP: float  # mean over repeats of the mAP on the single-shot galleries (AP = 1/rank)
    mAP_std: float
    cmc_repeats: np.ndarray  # (repeats, max_rank)
    mAP_repeats: np.ndarray  # (repeats,)
    num_valid: int  # probes with a non-junk genuine entry
    num_skipped: int
    repeats: int
    seed: int

    def __getitem__(self, key):
        return getattr(self, key)


# the most repeats of single_gallery_shot (the protocol draws 10): each one is a full pass
# over the matrix, so more than this is a typo, not a protocol (10**9 asked for 447 GiB)
MAX_REPEATS = 10_000


def check_repeats(repeats, name: str = "repeats") -> int:
    """``repeats`` if an integer in [1, MAX_REPEATS], else a ValueError naming ``name``."""
    repeats = as_count(repeats, name)
    if repeats > MAX_REPEATS:
        raise ValueError(f"{name}: expected at most {MAX_REPEATS} repeats (the protocol uses "
                         f"10; each is a pass over the matrix), got {repeats}")
    return repeats


def single_gallery_shot(scores, q_pids, g_pids, q_camids=None, g_camids=None,
                        repeats: int = 10, seed: int = 0, max_rank: int = 20,
                        block_rows: int = 256) -> SingleShotResult:
    """CUHK03 single-gallery-shot CMC (see the module docstring).

    scores: (P, G) similarities; ids (P,)/(G,) integers. Junk (same pid and same camera
    as the probe) is removed first; then, per probe and repeat, one entry per gallery
    subject is drawn uniformly among that subject's remaining entries
    (``numpy.random.default_rng(seed)``, repeats drawn in order, probes in blocks of
    ``block_rows``: the same arguments give the same draws). The probe's rank is the
    number of drawn impostor entries ranked before its drawn genuine entry (the
    package's order: higher score first, ties to the lower gallery index, NaN last).
    Probes without a non-junk genuine entry are skipped. ``repeats`` = 10 as in
    open-reid and deep-person-reid, at most :data:`MAX_REPEATS`. Memory: a few
    (block_rows, G) arrays and the (repeats, P) first-hit positions. A matrix without a
    finite score is a ValueError (every rank would be decided by the NaN rule alone).
    """
    max_rank = _check_max_rank(max_rank)
    repeats, block_rows = as_count(repeats, "repeats"), as_count(block_rows, "block_rows")
    check_repeats(repeats)
    seed = check_seed(seed)
    S = as_score_matrix(scores, "scores")
    P, G = S.shape
    require_finite_score(S, "scores")
    if (q_camids is None) != (g_camids is None):
        raise ValueError("q_camids/g_camids: give both camera id vectors or neither")
    cpu = torch.device("cpu")
    qp, gp = as_ids(q_pids, "q_pids", P, cpu).numpy(), as_ids(g_pids, "g_pids", G, cpu).numpy()
    if q_camids is not None:
        qc = as_ids(q_camids, "q_camids", P, cpu).numpy()
        gc = as_ids(g_camids, "g_camids", G, cpu).numpy()
    # gallery columns grouped by subject, so that a draw is a per-segment argmax
    order = np.argsort(gp, kind="stable")
    _, starts = np.unique(gp[order], return_index=True)
    rng = np.random.default_rng(seed)
    cols = np.arange(G)
    first_pos = np.full((repeats, P), -1, dtype=np.int64)
    for r in range(repeats):
        for a in range(0, P, block_rows):
            b = min(P, a + block_rows)
            x = S[a:b].detach().to("cpu", torch.float64).numpy()
            key = keys64(x.reshape(-1)).reshape(x.shape)  # package order, NaN lowest
            junk = np.zeros(x.shape, dtype=bool)
            if q_camids is not None:
                junk = (qp[a:b, None] == gp[None, :]) & (qc[a:b, None] == gc[None, :])
            # a random permutation of the columns per row: distinct draws, no ties
            u = rng.permuted(np.broadcast_to(cols, x.shape), axis=1).astype(np.int64)
            u[junk] = -1
            us = u[:, order]
            best = np.maximum.reduceat(us, starts, axis=1)
            seg = np.repeat(np.arange(starts.size), np.diff(np.append(starts, G)))
            drawn = np.zeros_like(junk)
            drawn[:, order] = (us == best[:, seg]) & (us >= 0)
            genuine = drawn & (qp[a:b, None] == gp[None, :])
            has = genuine.any(axis=1)
            gcol = genuine.argmax(axis=1)
            gkey = key[np.arange(b - a), gcol][:, None]
            before = drawn & ~genuine & ((key > gkey) | ((key == gkey) & (cols < gcol[:, None])))
            first_pos[r, a:b] = np.where(has, before.sum(axis=1), -1)
    valid = first_pos[0] >= 0
    n_valid = int(valid.sum())
    cmc_r = np.zeros((repeats, max_rank))
    map_r = np.zeros(repeats)
    if n_valid:
        fp = first_pos[:, valid]
        cmc_r = (fp[:, :, None] < np.arange(1, max_rank + 1)).mean(axis=1)
        map_r = (1.0 / (fp + 1.0)).mean(axis=1)
    ddof = 1 if repeats > 1 else 0
    return SingleShotResult(cmc_r.mean(0), cmc_r.std(0, ddof=ddof), float(map_r.mean()),
                            float(map_r.std(ddof=ddof)), cmc_r, map_r, n_valid, P - n_valid,
                            repeats, int(seed))
