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
from .accumulate import Block, BlockSource, check_block_rows
from ..ops.keys import keys64
from . import bootstrap as _bootstrap
from .core import RankResult, _check_max_rank, rank_metrics

__all__ = ["MultiQuery", "multi_query", "multi_query_metrics", "SingleShotResult",
           "single_gallery_shot", "multi_query_source", "single_gallery_shot_source",
           "PooledSource"]

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
    keys, groups = _groups(q_pids, q_camids, q_clothes, P)
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
    cmc_ci: Optional[np.ndarray] = None  # (max_rank, 2) bootstrap interval over probes (ci=)
    mAP_ci: Optional[tuple] = None

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
                        block_rows: int = 256, ci: Optional[float] = None, n_boot: int = 1000,
                        boot_seed: int = 0, boot_unit: str = "subject") -> SingleShotResult:
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
    (block_rows, G) arrays and the (repeats, P) first-hit positions. The draws do not
    depend on ``block_rows`` (:func:`_sgs_first_pos`). A matrix without a finite score is a
    ValueError (every rank would be decided by the NaN rule alone). ``ci=0.95`` sets
    ``cmc_ci`` and ``mAP_ci``: bootstrap percentile intervals over probe subjects
    (``boot_unit="probe"``: rows) of the mean over the repeats, the draws held fixed.
    """
    max_rank = _check_max_rank(max_rank)
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    repeats, block_rows = check_repeats(repeats), as_count(block_rows, "block_rows")
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
    blocks = lambda: ((a, S[a:a + block_rows]) for a in range(0, P, block_rows))  # noqa: E731
    first_pos = _sgs_first_pos(blocks, P, qp, gp, qc if q_camids is not None else None,
                               gc if q_camids is not None else None, repeats, seed)
    return _sgs_result(first_pos, repeats, seed, max_rank, boot, qp)


def _sgs_first_pos(row_blocks, P: int, qp, gp, qc, gc, repeats: int, seed: int) -> np.ndarray:
    """(repeats, P) int64 rank of each probe's drawn genuine entry among its drawn gallery
    (-1: no non-junk genuine entry). ``row_blocks()`` yields (first row, (b, G) scores) in
    row order, once per repeat; a block of width 0 stands for rows drawn but not scored
    (another process's, left at -1). numpy's ``permuted`` shuffles row after row from one
    generator, so the draws do not depend on how the rows are blocked."""
    G = gp.size
    # gallery columns grouped by subject, so that a draw is a per-segment argmax
    order = np.argsort(gp, kind="stable")
    _, starts = np.unique(gp[order], return_index=True)
    rng = np.random.default_rng(seed)
    cols = np.arange(G)
    first_pos = np.full((repeats, P), -1, dtype=np.int64)
    for r in range(repeats):
        for a, block in row_blocks():
            if block.shape[1] == 0 and G:  # draw these rows' permutations only
                for c in range(0, block.shape[0], 256):
                    rng.permuted(np.broadcast_to(cols, (min(256, block.shape[0] - c), G)),
                                 axis=1)
                continue
            x = block.detach().to("cpu", torch.float64).numpy()
            b = a + x.shape[0]
            key = keys64(x.reshape(-1)).reshape(x.shape)  # package order, NaN lowest
            junk = np.zeros(x.shape, dtype=bool)
            if qc is not None:
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
    return first_pos


def _sgs_result(first_pos: np.ndarray, repeats: int, seed: int, max_rank: int,
                boot=None, q_pids=None) -> "SingleShotResult":
    """The SingleShotResult of the (repeats, P) ranks; ``boot``: intervals over the probes
    (their subjects, ``q_pids``) of the mean over repeats."""
    P = first_pos.shape[1]
    valid = first_pos[0] >= 0
    n_valid = int(valid.sum())
    cmc_r = np.zeros((repeats, max_rank))
    map_r = np.zeros(repeats)
    if n_valid:
        fp = first_pos[:, valid]
        cmc_r = (fp[:, :, None] < np.arange(1, max_rank + 1)).mean(axis=1)
        map_r = (1.0 / (fp + 1.0)).mean(axis=1)
    ddof = 1 if repeats > 1 else 0
    res = SingleShotResult(cmc_r.mean(0), cmc_r.std(0, ddof=ddof), float(map_r.mean()),
                           float(map_r.std(ddof=ddof)), cmc_r, map_r, n_valid, P - n_valid,
                           repeats, int(seed))
    if boot is not None:
        _sgs_intervals(res, first_pos, q_pids, max_rank, boot)
    return res


def _sgs_intervals(res: SingleShotResult, first_pos: np.ndarray, q_pids: np.ndarray,
                   max_rank: int, boot) -> None:
    """``cmc_ci`` and ``mAP_ci`` of `res`: replicates of the mean over valid probes of each
    probe's mean over the repeats (the point values are those means)."""
    W = _bootstrap.Weights.of(boot, q_pids)
    valid = (first_pos[0] >= 0).astype(np.int64)
    hits = np.stack([_bootstrap.mean_replicates(W, (first_pos < k).mean(axis=0), valid)
                     for k in range(1, max_rank + 1)])
    ap = _bootstrap.mean_replicates(W, (1.0 / (first_pos + 1.0)).mean(axis=0), valid)
    res.cmc_ci = _bootstrap._pairs(boot, hits)
    res.mAP_ci = tuple(_bootstrap._pairs(boot, ap).tolist())


# ---------------------------------------------------------------------------------------
# out of core and sharded (issue 30): the same results from a block source
# ---------------------------------------------------------------------------------------
def _groups(q_pids, q_camids, q_clothes, P: int):
    """(pool keys (Q, 2|3), pool of every probe (P,)): :func:`multi_query`'s pooling."""
    cpu = torch.device("cpu")
    cols = [as_ids(q_pids, "q_pids", P, cpu).numpy(), as_ids(q_camids, "q_camids", P, cpu).numpy()]
    if q_clothes is not None:
        cols.append(as_ids(q_clothes, "q_clothes", P, cpu).numpy())
    keys, groups = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
    return keys, groups.reshape(-1)


class PooledSource(BlockSource):
    """The multi-query matrix of a block source, ``queries_per_pass`` pooled queries at a
    time: each block of pooled queries is one walk over the source's row blocks, adding
    every member row into its pool in probe order (as :func:`multi_query` does, so the
    float64 pools are the same bit for bit). Memory: two (queries_per_pass, G) float64
    arrays beside the source's block; walks: ceil(Q / queries_per_pass) per pass."""

    def __init__(self, source: BlockSource, groups: np.ndarray, num_queries: int,
                 reduce: str, queries_per_pass: int):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
        self.source, self.groups, self.reduce = source, groups, reduce
        self.num_rows, self.num_cols = num_queries, source.num_cols
        self.dtype, self.device = torch.float64, source.device
        self.per_pass = check_block_rows(queries_per_pass)

    def blocks(self, scores=True, merge=False):
        for qa in range(0, self.num_rows, self.per_pass):
            qb = min(self.num_rows, qa + self.per_pass)
            yield Block(slice(qa, qb), self._pool(qa, qb))

    def _pool(self, qa: int, qb: int) -> torch.Tensor:
        G, dev = self.num_cols, self.device
        counts = torch.zeros((qb - qa, G), dtype=torch.float64, device=dev)
        pooled = torch.full((qb - qa, G), -torch.inf if self.reduce == "max" else 0.0,
                            dtype=torch.float64, device=dev)
        for blk in self.source.blocks(scores=True):
            g = self.groups[blk.rows]
            mine = np.flatnonzero((g >= qa) & (g < qb))
            if mine.size == 0:
                continue
            # the k-th member of a pool within this block is added at step k (probe order)
            order = mine[np.argsort(g[mine], kind="stable")]
            gs = g[order] - qa
            first = np.searchsorted(gs, gs)
            step = np.arange(gs.size) - first
            for k in range(int(step.max()) + 1):
                at = step == k
                rows = blk.scores[torch.as_tensor(order[at], device=dev)].to(torch.float64)
                nan = torch.isnan(rows)
                sel = torch.as_tensor(gs[at], device=dev)
                counts[sel] += (~nan).to(torch.float64)
                if self.reduce == "max":
                    pooled[sel] = torch.maximum(pooled[sel], rows.masked_fill(nan, -torch.inf))
                else:
                    pooled[sel] += rows.masked_fill(nan, 0.0)
        if self.reduce == "mean":
            pooled = pooled / counts.clamp_min(1.0)
        return pooled.masked_fill(counts == 0, torch.nan)


def multi_query_source(source: BlockSource, q_pids, g_pids, q_camids, g_camids,
                       q_clothes=None, g_clothes=None, reduce: str = "max",
                       mode: str = "general", max_rank: int = 20,
                       queries_per_pass: Optional[int] = None, boot=None,
                       red=None, shard: str = "rows", col_offset: int = 0) -> RankResult:
    """:func:`multi_query_metrics` of a block source (a score file read in row blocks,
    :class:`qme_ext.metrics.streaming.FileSource`): the same RankResult, bit for bit
    (tested). ``queries_per_pass`` pooled queries per walk over the source (default all);
    ``boot`` a :func:`qme_ext.metrics.bootstrap.options` value. ``red``/``shard="columns"``/
    ``col_offset``: this process holds some gallery columns of every probe (pools are
    per column, so each process pools its own; ranks are then summed as in
    :func:`qme_ext.distributed.evaluate`)."""
    from .accumulate import LOCAL, Plan, accumulate
    from .core import _rank_results, _validate_ids
    max_rank = _check_max_rank(max_rank)
    keys, groups = _groups(q_pids, q_camids, q_clothes, source.num_rows)
    Q = keys.shape[0]
    pooled = PooledSource(source, groups, Q, reduce, Q if queries_per_pass is None
                          else queries_per_pass)
    ids = _validate_ids(Q, source.num_cols, source.device, keys[:, 0], g_pids, keys[:, 1],
                        g_camids, keys[:, 2] if q_clothes is not None else None, g_clothes,
                        [mode])
    red = LOCAL if red is None else red
    parts = accumulate(pooled, ids, Plan(modes=[mode], shard=shard, col_offset=col_offset), red)
    res = _rank_results(parts.rank, max_rank, False)[0]
    if boot is not None:
        _bootstrap.rank_intervals(res, parts.rank, keys[:, 0], max_rank, boot)
    return res


def single_gallery_shot_source(source: BlockSource, q_pids, g_pids, q_camids=None,
                               g_camids=None, repeats: int = 10, seed: int = 0,
                               max_rank: int = 20, boot=None, red=None) -> SingleShotResult:
    """:func:`single_gallery_shot` of a block source, one walk per repeat: the same result,
    bit for bit, for any block size (tested). ``red``: row shards over processes (each
    holds some probes, in rank order, and the whole gallery; ``q_*`` its own ids): every
    process draws every row's permutation (the draws are one sequence) but scores only
    its rows; the ranks are gathered, so every process gets the one-process result."""
    max_rank = _check_max_rank(max_rank)
    repeats = check_repeats(repeats)
    seed = check_seed(seed)
    if (q_camids is None) != (g_camids is None):
        raise ValueError("q_camids/g_camids: give both camera id vectors or neither")
    cpu = torch.device("cpu")
    P, G = source.num_rows, source.num_cols
    qp, gp = as_ids(q_pids, "q_pids", P, cpu).numpy(), as_ids(g_pids, "g_pids", G, cpu).numpy()
    qc = None if q_camids is None else as_ids(q_camids, "q_camids", P, cpu).numpy()
    gc = None if g_camids is None else as_ids(g_camids, "g_camids", G, cpu).numpy()
    if red is None:
        blocks = lambda: ((blk.rows.start, blk.scores) for blk in source.blocks())  # noqa: E731
        fp = _sgs_first_pos(blocks, P, qp, gp, qc, gc, repeats, seed)
        return _sgs_result(fp, repeats, seed, max_rank, boot, qp)
    sizes = red.stack(np.asarray([P], dtype=np.int64))[:, 0]
    lo, total = int(sizes[:red.rank].sum()), int(sizes.sum())
    qp_all = red.cat(qp)
    qc_all = None if qc is None else red.cat(qc)
    fp = _sgs_first_pos(lambda: _shard_blocks(source, lo, total, G), total, qp_all, gp,
                        qc_all, gc, repeats, seed)
    mine = red.cat(np.ascontiguousarray(fp[:, lo:lo + P]))
    return _sgs_result(mine, repeats, seed, max_rank, boot, qp_all)


def _shard_blocks(source: BlockSource, lo: int, total: int, G: int):
    """This process's row blocks at their global rows, between empty stand-ins for the
    other processes' rows (drawn but not scored)."""
    if lo:
        yield 0, torch.zeros((lo, 0), dtype=torch.float64)
    end = lo
    for blk in source.blocks():
        yield lo + blk.rows.start, blk.scores
        end = lo + blk.rows.stop
    if end < total:
        yield end, torch.zeros((total - end, 0), dtype=torch.float64)


def queries_per_pass(num_cols: int, max_memory) -> Optional[int]:
    """Pooled queries per walk of :class:`PooledSource` under ``max_memory`` (None: all):
    its pooled and count rows, 16 bytes per gallery entry each (held beside the source's
    own block, which the same budget bounds)."""
    if max_memory is None:
        return None
    from .streaming import rows_per_block
    return rows_per_block(16 * max(1, num_cols), max_memory)
