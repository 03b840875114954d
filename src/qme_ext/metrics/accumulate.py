"""Blockwise, shardable accumulation of the evaluation engine (docs/definitions.rst, §2, §6).

One design serves three cases:

* in memory: the whole matrix is one block (``metrics.evaluate`` and friends);
* out of core: row blocks read from a file (``metrics.evaluate_file``);
* sharded: each process holds a shard of the probes (rows) or of the gallery
  (columns) and a :class:`Reducer` combines the processes' states
  (``qme_ext.distributed``).

A :class:`BlockSource` yields row blocks of the local score matrix (and of the
merge matrix) and can be walked several times. Per metric family the partial
state of a block combines without loss:

* per-probe results (first hit and AP per protocol, open-set statistics)
  concatenate over row blocks and row shards;
* key histograms and counts add up (radix select of TAR@FAR; per-query ranks of
  column shards); maxima take the maximum (open-set row maxima of column shards);
* the genuine pairs (few) are gathered whole.

After the reduction, the same finishing code (``qme_ext.metrics``) turns the
states into results, so they are bit-identical whatever the blocking and the
sharding. Passes over the data: one for ranking and open-set (two with column
shards: the good entries' and genuine scores are gathered first), plus the
radix select's digit passes: none more for 32-bit keys when the first walk's
candidate bins hold the thresholds (``Plan.tar_fars``, one process;
:class:`~qme_ext.metrics.order_stats.CandidateBins`), else one; two or three for
float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..ops import keys as _keys
from ..ops.evaluation import openset_stats, rank_counts
from ..ops.shard import count_before
from .order_stats import (CandidateBins, HistogramPass, ImpostorKeys, KeyStats,
                          block_histogram, build_impostor_keys, key_bits_of)


# ---------------------------------------------------------------------------
# sources and reducers
# ---------------------------------------------------------------------------
@dataclass
class Block:
    """Probe rows ``rows`` (local indices) of the local matrices."""

    rows: slice
    scores: Optional[torch.Tensor] = None  # (b, G_local)
    merge: Optional[torch.Tensor] = None  # (b, S_local)


class BlockSource:
    """Row blocks of a (P, G) score matrix and of its (P, S) merge matrix.

    Subclasses set the shapes and implement :meth:`blocks`; the engine may walk
    the blocks several times (one walk per pass), asking only for what a pass needs.
    """

    num_rows: int
    num_cols: int
    merge_cols: Optional[int] = None  # None: no merge matrix
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    # True: another walk only reads blocks already in memory, so the radix select walks
    # again for its refinement digits rather than counting candidate bins in the first
    # walk (order_stats.CandidateBins), which costs as much and may miss
    cheap_rewalk: bool = False

    def blocks(self, scores: bool = True, merge: bool = False) -> Iterator[Block]:
        raise NotImplementedError


class TensorSource(BlockSource):
    """In-memory tensors, as one block (``block_rows=None``) or row blocks (views)."""

    cheap_rewalk = True

    def __init__(self, scores: Optional[torch.Tensor],  # (P, G); None: merge matrix only
                 merge: Optional[torch.Tensor] = None,  # (P, S)
                 block_rows: Optional[int] = None):
        self.scores, self.merge = scores, merge
        main = scores if scores is not None else merge
        self.num_rows = main.shape[0]
        self.num_cols = scores.shape[1] if scores is not None else 0
        self.merge_cols = None if merge is None else merge.shape[1]
        self.dtype, self.device = main.dtype, main.device
        self.block_rows = self.num_rows if block_rows is None else check_block_rows(block_rows)

    def blocks(self, scores=True, merge=False):
        for r0 in range(0, self.num_rows, self.block_rows):
            sl = slice(r0, min(r0 + self.block_rows, self.num_rows))
            yield Block(sl, self.scores[sl] if scores and self.scores is not None else None,
                        self.merge[sl] if merge and self.merge is not None else None)


def check_block_rows(block_rows) -> int:
    if not isinstance(block_rows, (int, np.integer)) or isinstance(block_rows, bool) \
            or block_rows < 1:
        raise ValueError(f"block_rows: expected an integer >= 1, got {block_rows!r}")
    return int(block_rows)


class Reducer:
    """Combines partial states across processes; this base class is one process.

    ``cat`` concatenates along the last axis in process order (per-probe arrays
    of row shards, gathered pairs), ``stack`` stacks equal shapes on a new first
    axis, ``sum``/``max`` reduce elementwise. Arrays are numpy.
    """

    size = 1
    rank = 0

    def sum(self, a: np.ndarray) -> np.ndarray:
        return a

    def max(self, a: np.ndarray) -> np.ndarray:
        return a

    def cat(self, a: np.ndarray) -> np.ndarray:
        return a

    def stack(self, a: np.ndarray) -> np.ndarray:
        return a[None]


LOCAL = Reducer()


# ---------------------------------------------------------------------------
# candidates: same-pid gallery entries of every probe, as CSR
# ---------------------------------------------------------------------------
@dataclass
class Candidates:
    offsets: torch.Tensor  # (P + 1,) int64
    index: torch.Tensor  # (nnz,) int64 gallery columns, ascending within a probe
    probe: torch.Tensor  # (nnz,) int64 probe of each candidate
    max_per_probe: int


class GalleryIndex:
    """The gallery grouped by pid once; :meth:`candidates` serves any block of probes."""

    def __init__(self, g_pids: torch.Tensor):  # (G,) int64
        # the same permutation either way (stable); torch's CPU stable argsort takes
        # ~100x numpy's on a busy machine, longer than a pass over the scores
        self.order = (torch.from_numpy(np.argsort(g_pids.numpy(), kind="stable"))
                      if g_pids.device.type == "cpu" else torch.argsort(g_pids, stable=True))
        self.uniq, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    @property
    def max_group(self) -> int:
        """Most gallery entries sharing one pid (bounds a probe's candidates)."""
        return int(self.counts.max()) if self.counts.numel() else 0

    def candidates(self, q_pids: torch.Tensor) -> Candidates:  # (P,) int64
        dev = q_pids.device
        P = q_pids.shape[0]
        pos = torch.searchsorted(self.uniq, q_pids).clamp(max=self.uniq.shape[0] - 1)
        found = self.uniq[pos] == q_pids
        cnt = torch.where(found, self.counts[pos], torch.zeros_like(pos))
        offsets = torch.zeros(P + 1, dtype=torch.int64, device=dev)
        offsets[1:] = torch.cumsum(cnt, 0)
        probe = torch.repeat_interleave(torch.arange(P, device=dev), cnt)
        within = torch.arange(probe.shape[0], device=dev) - offsets[:-1][probe]
        index = self.order[self.starts[pos][probe] + within]
        max_per = int(cnt.max().item()) if P else 0
        return Candidates(offsets, index.contiguous(), probe, max_per)

    def num_candidates(self, q_pids: torch.Tensor) -> int:  # (P,) int64
        """Same-pid pairs of these probes with the gallery (the genuine pairs)."""
        if self.uniq.numel() == 0:
            return 0
        pos = torch.searchsorted(self.uniq, q_pids).clamp(max=self.uniq.shape[0] - 1)
        return int(torch.where(self.uniq[pos] == q_pids, self.counts[pos], 0).sum())


def mode_flags(cand: Candidates, modes: Sequence[str], q_camids, g_camids, q_clothes,
               g_clothes) -> torch.Tensor:
    """(nnz,) uint8: bit 2m = good, bit 2m+1 = junk for modes[m] (docs/definitions.rst, §2.1).

    Id vectors are those of the block's probes and of the gallery (camera or
    clothes ids None: every same-pid entry has a different camera / no clothes rule).
    """
    nnz = cand.index.shape[0]
    dev = cand.index.device
    flags = torch.zeros(nnz, dtype=torch.uint8, device=dev)
    ones = torch.ones(nnz, dtype=torch.bool, device=dev)
    same_cam = (g_camids[cand.index] == q_camids[cand.probe]) if q_camids is not None else ~ones
    same_clo = (g_clothes[cand.index] == q_clothes[cand.probe]) if q_clothes is not None else None
    for m, mode in enumerate(modes):
        if mode == "general":
            good, junk = ~same_cam, same_cam
        elif mode == "cc":
            good, junk = ~same_cam & ~same_clo, same_cam | same_clo
        else:  # sc
            good, junk = ~same_cam & same_clo, same_cam | ~same_clo
        flags |= good.to(torch.uint8) << (2 * m)
        flags |= junk.to(torch.uint8) << (2 * m + 1)
    return flags


# ---------------------------------------------------------------------------
# what to compute
# ---------------------------------------------------------------------------
@dataclass
class Ids:
    """Validated id tensors on the scores' device: the local probes and gallery."""

    q_pids: torch.Tensor  # (P_local,)
    g_pids: Optional[torch.Tensor] = None  # (G_local,); None: open-set only
    q_camids: Optional[torch.Tensor] = None
    g_camids: Optional[torch.Tensor] = None
    q_clothes: Optional[torch.Tensor] = None
    g_clothes: Optional[torch.Tensor] = None


@dataclass
class OpenSetSetup:
    """The global open-set inputs, identical in every process."""

    subject_ids: np.ndarray  # (S,) int64, the merge matrix's column order
    splits: list  # enrolled subject ids per split
    enrolled: np.ndarray  # (n_splits, S) uint8

    def genuine_cols(self, q_pids: np.ndarray) -> np.ndarray:
        """(P,) int64 column of each probe's own subject, -1 when absent."""
        sid = self.subject_ids
        order = np.argsort(sid, kind="stable")
        pos = np.clip(np.searchsorted(sid[order], q_pids), 0, sid.size - 1)
        return np.where(sid[order][pos] == q_pids, order[pos], -1).astype(np.int64)


@dataclass
class Plan:
    modes: Sequence[str] = ()  # ranking protocols; () = no ranking
    tar: bool = False
    openset: Optional[OpenSetSetup] = None
    shard: str = "rows"  # "rows" or "columns" (how processes split the matrices)
    # the FARs TAR@FAR will be asked for: their refinement digit is counted in the first
    # walk (order_stats.CandidateBins), so no second walk is needed; () = walk again
    tar_fars: Sequence[float] = ()
    col_offset: int = 0  # columns: global column of this process's first score column
    merge_col_offset: int = 0  # columns: global column of its first merge column


@dataclass
class Partials:
    """Reduced states, identical in every process, ready for the finishing code."""

    # (first_pos, ap, num_good, last_pos, r_hits, map_r), each (n_modes, P)
    rank: Optional[tuple] = None
    impostors: Optional[ImpostorKeys] = None
    num_genuine: int = 0
    openset: Optional[tuple] = None  # (max_other (NS, P), num_ge (NS, P), gen (P,), gcol (P,))
    # this process's {"score_mat": {"nan", "posinf", "neginf"}, "merge_score_mat": ...} entry
    # counts, read off the TAR and open-set passes (row shards only; not reduced)
    nonfinite: Optional[dict] = None


# ---------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------
class _RankRows:
    """Per-probe first hit, AP, #good and last hit from ``rank_counts``; concatenated."""

    def __init__(self, ids: Ids, modes):
        self.ids, self.modes, self.parts = ids, list(modes), []

    def add(self, blk: Block, cand: Candidates, values) -> None:
        i, r = self.ids, blk.rows
        flags = mode_flags(cand, self.modes, _rows(i.q_camids, r), i.g_camids,
                           _rows(i.q_clothes, r), i.g_clothes)
        out = rank_counts(blk.scores, cand.offsets, cand.index, flags, len(self.modes),
                          cand.max_per_probe)
        self.parts.append(tuple(t.cpu().numpy() for t in out))

    def reduce(self, red: Reducer, source: BlockSource) -> tuple:
        return tuple(red.cat(np.concatenate([p[k] for p in self.parts], axis=1))
                     for k in range(6))  # rank_counts' outputs


class _RankColumns:
    """Column shards: the good entries of every probe are gathered from all shards,
    each shard counts its entries ranked before each of them (``count_before``),
    the counts add up to global ranks, and positions, first hits and AP follow
    from the candidates' own order (they are few)."""

    def __init__(self, ids: Ids, modes, col_offset: int, bits: int):
        self.ids, self.modes, self.col_offset, self.bits = ids, list(modes), col_offset, bits
        self.parts = []

    def add(self, blk: Block, cand: Candidates, values: np.ndarray) -> None:
        i, r = self.ids, blk.rows
        flags = mode_flags(cand, self.modes, _rows(i.q_camids, r), i.g_camids,
                           _rows(i.q_clothes, r), i.g_clothes)
        self.parts.append((cand.probe.cpu().numpy() + r.start,
                           cand.index.cpu().numpy() + self.col_offset, values,
                           flags.cpu().numpy()))

    def reduce(self, red: Reducer, source: BlockSource) -> tuple:
        probe, col, values, flags = (red.cat(np.concatenate([p[k] for p in self.parts]))
                                     for k in range(4))
        P = source.num_rows
        M = len(self.modes)
        keys = _keys.keys(values, self.bits)  # rank order: NaN lowest, no replacement
        # candidates in rank order within each probe: key descending, column ascending
        order = np.lexsort((col, ~keys, probe))
        probe, col, keys, flags = probe[order], col[order], keys[order], flags[order]
        good_any = (flags & np.uint8(0x15)) != 0
        q = np.flatnonzero(good_any)
        offsets = np.zeros(P + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(probe[q], minlength=P))
        dev = source.device
        q_keys = torch.from_numpy(keys[q].view(np.int64)).to(dev)
        q_cols = torch.from_numpy(col[q]).to(dev)
        counts = []
        for blk in source.blocks(scores=True):
            a, b = offsets[blk.rows.start], offsets[blk.rows.stop]
            offs = torch.from_numpy(offsets[blk.rows.start:blk.rows.stop + 1] - a).to(dev)
            counts.append(count_before(blk.scores, self.col_offset, offs, q_keys[a:b],
                                       q_cols[a:b]).cpu().numpy())
        before = red.sum(np.concatenate(counts))  # global rank of each good entry
        total = np.zeros(probe.size, dtype=np.int64)
        total[q] = before
        return _per_probe_from_ranks(probe, flags, total, P, M)


def _per_probe_from_ranks(probe: np.ndarray, flags: np.ndarray, total: np.ndarray, P: int,
                          M: int) -> tuple:
    """(first_pos, ap, num_good, last_pos, r_hits, map_r), each (M, P), as ``rank_counts``
    returns them, from every
    candidate in rank order within its probe: ``probe`` (nnz,) sorted, ``flags`` (nnz,),
    ``total`` (nnz,) entries of the whole row ranked before each good candidate."""
    seg_start = np.searchsorted(probe, np.arange(P))
    fp = np.full((M, P), -1, dtype=np.int64)
    ap = np.zeros((M, P), dtype=np.float64)
    ng = np.zeros((M, P), dtype=np.int64)
    lp = np.full((M, P), -1, dtype=np.int64)
    rh = np.zeros((M, P), dtype=np.int64)
    mr = np.zeros((M, P), dtype=np.float64)
    for m in range(M):
        good = (flags >> np.uint8(2 * m)) & np.uint8(1)
        junk = ((flags >> np.uint8(2 * m + 1)) & np.uint8(1)).astype(np.int64)
        junk_above = _segment_exclusive_cumsum(junk, probe, seg_start)
        g = np.flatnonzero(good)
        gp = probe[g]
        pos = total[g] - junk_above[g]  # non-junk entries ranked before the good entry
        i_m = _segment_exclusive_cumsum(np.ones(g.size, dtype=np.int64), gp,
                                        np.searchsorted(gp, np.arange(P))) + 1
        ng[m] = np.bincount(gp, minlength=P)
        first = i_m == 1
        fp[m, gp[first]] = pos[first]
        last = i_m == ng[m, gp]
        lp[m, gp[last]] = pos[last]
        ap[m] = _segment_sequential_sum(i_m / (pos + 1.0), gp, P)
        has = ng[m] > 0
        ap[m, has] /= ng[m, has]
        # R-precision / MAP@R, R = n: the goods at positions < R (adding 0.0 elsewhere
        # keeps the kernels' left-to-right sum bit for bit)
        top = pos < ng[m, gp]
        rh[m] = np.bincount(gp[top], minlength=P)
        mr[m] = _segment_sequential_sum(np.where(top, i_m / (pos + 1.0), 0.0), gp, P)
        mr[m, has] /= ng[m, has]
    return fp, ap, ng, lp, rh, mr


def _rows(t: Optional[torch.Tensor], rows: slice):
    return None if t is None else t[rows]


def _segment_exclusive_cumsum(x: np.ndarray, seg: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """Within each run of equal ``seg`` (sorted), the sum of the earlier elements."""
    c = np.cumsum(x) - x
    if x.size == 0:
        return c
    return c - c[seg_start[seg]]


def _segment_sequential_sum(terms: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """(n_seg,) per-segment sums accumulated left to right from 0.0, like the
    ``rank_counts`` kernels do, so AP is bit-identical to the row path (numpy's
    pairwise ``sum`` would round differently)."""
    out = np.zeros(n_seg, dtype=np.float64)
    if terms.size == 0:
        return out
    start = np.searchsorted(seg, np.arange(n_seg))
    length = np.bincount(seg, minlength=n_seg)
    for k in range(int(length.max())):
        live = np.flatnonzero(length > k)
        out[live] += terms[start[live] + k]
    return out


# ---------------------------------------------------------------------------
# verification (TAR@FAR)
# ---------------------------------------------------------------------------
class _Tar:
    """Top-digit key statistics per block (additive) and the genuine scores; with
    ``bins`` (a :class:`CandidateBins`) also the next digit of the bins that can hold
    the thresholds, so that the select needs no second walk."""

    def __init__(self, bins: Optional[CandidateBins] = None):
        self.stats, self.genuine, self.bins = None, [], bins

    def add(self, blk: Block, values: np.ndarray) -> None:
        # a running sum: one 65,536-bin histogram held, whatever the number of blocks
        part = KeyStats.of(blk.scores)
        self.stats = part if self.stats is None else KeyStats.merge([self.stats, part])
        self.genuine.append(values)
        if self.bins is not None:
            self.bins.add(blk.scores, part, values)

    def reduce(self, red: Reducer, source: BlockSource) -> tuple[ImpostorKeys, int]:
        local = self.stats
        stats = KeyStats.from_arrays(local.bits, red.stack(local.as_array()))
        genuine = red.cat(np.concatenate(self.genuine))

        def histogram(shift: int, prefixes, nan_key: int) -> np.ndarray:
            if self.bins is not None:  # one process: the counts of the first walk
                h = self.bins.lookup(shift, prefixes, nan_key, stats.nan_count)
                if h is not None:
                    return h
            h = None
            for blk in source.blocks(scores=True):
                hb = block_histogram(blk.scores, shift, prefixes, nan_key)
                h = hb if h is None else h + hb
            return red.sum(h)

        return build_impostor_keys(stats, genuine, histogram), int(genuine.size)


# ---------------------------------------------------------------------------
# open-set identification
# ---------------------------------------------------------------------------
class _OpenSetRows:
    """Per-probe ``openset_stats`` and genuine merge scores; concatenated."""

    def __init__(self, setup: OpenSetSetup, q_pids: np.ndarray, device):
        self.gcol = setup.genuine_cols(q_pids)
        self.gcol_t = torch.from_numpy(self.gcol).to(device)
        self.enrolled = torch.from_numpy(setup.enrolled).to(device)
        self.parts = []
        self.nonfinite = np.zeros(3, dtype=np.int64)  # NaN, +inf, -inf of the merge matrix

    def add(self, blk: Block) -> None:
        M = blk.merge
        gcol = self.gcol_t[blk.rows]
        max_other, num_ge, nonfinite = openset_stats(M, gcol, self.enrolled)
        self.nonfinite += nonfinite.cpu().numpy()
        self.parts.append((max_other.cpu().numpy(), num_ge.cpu().numpy(),
                           _genuine_merge(M, gcol)))

    def reduce(self, red: Reducer, source: BlockSource) -> tuple:
        max_other, num_ge = (red.cat(np.concatenate([p[k] for p in self.parts], axis=1))
                             for k in range(2))
        gen = red.cat(np.concatenate([p[2] for p in self.parts]))
        return max_other, num_ge, gen, red.cat(self.gcol)


def _genuine_merge(M: torch.Tensor, gcol: torch.Tensor) -> np.ndarray:
    """(b,) float64 merge score of each probe's genuine column (NaN where absent)."""
    has = gcol >= 0
    gen = torch.full((M.shape[0],), float("nan"), dtype=torch.float64, device=M.device)
    rows = torch.nonzero(has).reshape(-1)
    gen[rows] = M[rows, gcol[rows]].to(torch.float64)
    return gen.cpu().numpy()


class _OpenSetColumns:
    """Column shards of the merge matrix: the genuine scores are gathered first
    (each lives in one shard); then each shard runs ``openset_stats`` on its
    columns plus one appended, never-enrolled column holding the genuine score,
    and the row maxima take the maximum, the counts add up."""

    def __init__(self, setup: OpenSetSetup, q_pids: np.ndarray, offset: int, device):
        self.gcol = setup.genuine_cols(q_pids)
        self.offset, self.device = offset, device
        self.enrolled_all = setup.enrolled
        self.gen_parts = []

    def add(self, blk: Block) -> None:
        local = self.gcol[blk.rows] - self.offset
        mine = (self.gcol[blk.rows] >= 0) & (local >= 0) & (local < blk.merge.shape[1])
        gcol = torch.from_numpy(np.where(mine, local, -1)).to(self.device)
        self.gen_parts.append((_genuine_merge(blk.merge, gcol), mine))

    def reduce(self, red: Reducer, source: BlockSource) -> tuple:
        gen_local = np.concatenate([p[0] for p in self.gen_parts])
        mine = np.concatenate([p[1] for p in self.gen_parts])
        owners = red.stack(mine.astype(np.uint8))
        values = red.stack(gen_local)
        if not np.array_equal(owners.sum(axis=0), (self.gcol >= 0).astype(owners.dtype)):
            raise ValueError("unique_g_pids: every subject column must be held by exactly one "
                             "shard of merge_score_mat")
        gen = np.where(self.gcol >= 0, values[owners.argmax(axis=0), np.arange(self.gcol.size)],
                       np.nan)
        S_l = source.merge_cols
        enrolled = np.concatenate([self.enrolled_all[:, self.offset:self.offset + S_l],
                                   np.zeros((self.enrolled_all.shape[0], 1), np.uint8)], axis=1)
        enrolled_t = torch.from_numpy(enrolled).to(self.device)
        parts = []
        for blk in source.blocks(scores=False, merge=True):
            M, r = blk.merge, blk.rows
            g = torch.from_numpy(gen[r]).to(device=self.device, dtype=M.dtype)
            # the genuine column: local when this shard holds it, else the appended one
            local = self.gcol[r] - self.offset
            here = (self.gcol[r] >= 0) & (local >= 0) & (local < S_l)
            gcol = np.where(here, local, np.where(self.gcol[r] >= 0, S_l, -1))
            aug = torch.cat([M, g[:, None]], dim=1)
            mo, ng, _ = openset_stats(aug, torch.from_numpy(gcol).to(self.device), enrolled_t)
            parts.append((mo.cpu().numpy(), ng.cpu().numpy()))
        max_other = np.concatenate([p[0] for p in parts], axis=1)
        # NaN ranks lowest and the finishing code reads it as -inf: so does the max
        max_other = red.max(np.where(np.isnan(max_other), -np.inf, max_other))
        num_ge = red.sum(np.concatenate([p[1] for p in parts], axis=1))
        return max_other, num_ge, gen, self.gcol


# ---------------------------------------------------------------------------
# the passes
# ---------------------------------------------------------------------------
def accumulate(source: BlockSource, ids: Ids, plan: Plan, red: Reducer = LOCAL) -> Partials:
    """Walk `source` (once, plus the passes column shards and the radix select
    need), reduce with `red` and return the states every metric is finished from."""
    columns = plan.shard == "columns"
    bits = key_bits_of(torch.empty(0, dtype=source.dtype))
    rank = None
    if plan.modes:
        rank = (_RankColumns(ids, plan.modes, plan.col_offset, bits) if columns
                else _RankRows(ids, plan.modes))
    gallery = GalleryIndex(ids.g_pids) if plan.modes or plan.tar else None
    tar = None
    if plan.tar:
        # the refinement digit in the first walk: one process only (the processes of a
        # shard group would have to choose the same bins and walk again together)
        bins = None
        if plan.tar_fars and red.size == 1 and not source.cheap_rewalk:
            bins = CandidateBins(bits, plan.tar_fars, source.num_rows * source.num_cols,
                                 gallery.num_candidates(ids.q_pids))
        tar = _Tar(bins)
    opn = None
    if plan.openset is not None:
        q_pids = ids.q_pids.cpu().numpy()  # columns: every process holds every probe
        opn = (_OpenSetColumns(plan.openset, q_pids, plan.merge_col_offset, source.device)
               if columns else _OpenSetRows(plan.openset, q_pids, source.device))
    need_values = tar is not None or columns
    for blk in source.blocks(scores=gallery is not None, merge=opn is not None):
        if gallery is not None:
            cand = gallery.candidates(ids.q_pids[blk.rows])
            values = (blk.scores[cand.probe, cand.index].to(torch.float64).cpu().numpy()
                      if need_values else None)
            if rank is not None:
                rank.add(blk, cand, values)
            if tar is not None:
                tar.add(blk, values)
        if opn is not None:
            opn.add(blk)
    out = Partials()
    if tar is not None and isinstance(opn, _OpenSetRows):
        nf = opn.nonfinite.tolist()
        none = {"nan": 0, "posinf": 0, "neginf": 0}
        out.nonfinite = {"score_mat": tar.stats.nonfinite() if tar.stats else none,
                         "merge_score_mat": dict(zip(("nan", "posinf", "neginf"), nf))}
    if rank is not None:
        out.rank = rank.reduce(red, source)
    if opn is not None:
        out.openset = opn.reduce(red, source)
    if tar is not None:
        out.impostors, out.num_genuine = tar.reduce(red, source)
    return out


__all__ = ["Block", "BlockSource", "TensorSource", "Reducer", "LOCAL", "Candidates",
           "GalleryIndex", "mode_flags", "Ids", "OpenSetSetup", "Plan", "Partials",
           "accumulate", "check_block_rows", "HistogramPass"]
