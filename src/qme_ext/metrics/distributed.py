"""Sharded evaluation with ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

Each process of a group holds a shard of the evaluation and calls
:func:`evaluate` with the same arguments as :func:`qme_ext.metrics.evaluate`
(its own shard and ids) plus ``group`` and ``shard``; every process gets the
whole report, bit-identical to one process evaluating the whole matrices.

``shard="rows"`` -- each process holds some probes: its rows of ``score_mat`` and
``merge_score_mat`` and their ``q_*`` ids; the gallery ids and ``unique_g_pids``
are the whole gallery's, the same everywhere. Per-probe results are gathered,
impostor-key histograms summed.

``shard="columns"`` -- each process holds some gallery entries: its columns of
``score_mat`` with their ``g_*`` ids, and some subjects: its columns of
``merge_score_mat`` with their ``unique_g_pids``; the probe ids are the same
everywhere. The global gallery (and subject) order is the processes' shards in
rank order. Ranking: the good entries of every probe are gathered (they are few),
each process counts its entries ranked before each of them
(``qme_ext::count_before``), the counts are summed into global ranks; TAR
histograms are summed; open-set gathers each probe's genuine score from the
process holding its subject, then takes the maximum of the row maxima and sums
the counts of enrolled columns at or above it.

``shard=None`` infers the layout from the ids: rows when every process has the
same gallery ids (and not the same probe ids), columns in the opposite case.
Every process must hold at least one row and one column of each matrix, in the
same dtype. A validation error on any process is raised on every process (no
process is left waiting in a collective).

Only collectives of ``torch.distributed`` move data (all_gather, all_reduce),
on the GPU of the process with NCCL and on the CPU with gloo; what moves is
O(P + G) numbers plus one 65,536-bin histogram per radix digit, never the
score matrices.

:func:`topk` is ``qme_ext.topk`` of a sharded matrix: row shards gather the
per-probe lists; column shards gather each process's k best entries of every
probe (with global columns) and select the k best of those again, which gives
the single-process result exactly (ties go to the lower global column).

Launch, e.g. 4 processes on one machine::

    torchrun --nproc-per-node 4 my_eval.py   # my_eval.py calls
    # torch.distributed.init_process_group("gloo"); ...
    # report = qme_ext.distributed.evaluate(S_rows, M_rows, q_pids_rows, ..., shard="rows")
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import bootstrap as _bootstrap, core as metrics
from .accumulate import Reducer, TensorSource
from ..ops.inputs import as_ids, as_probabilities, as_score_matrix
from ..ops.common import DTYPE_CODES

__all__ = ["evaluate", "evaluate_embeddings", "topk", "TorchReducer", "nccl_device"]

SHARDS = ("rows", "columns")


def nccl_device(group=None) -> torch.device:
    """This process's GPU in an NCCL group: the group's bound device
    (``init_process_group(..., device_id=...)``), else torchrun's ``LOCAL_RANK``, else the
    current device. Never plain ``cuda:0`` on every rank: NCCL refuses two ranks on one GPU."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    bound = getattr(pg, "bound_device_id", None)
    if bound is not None:
        return torch.device(bound)
    local = os.environ.get("LOCAL_RANK")
    if local is not None and torch.cuda.device_count() > 0:
        return torch.device("cuda", int(local) % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


class TorchReducer(Reducer):
    """:class:`qme_ext.metrics.accumulate.Reducer` over a ``torch.distributed`` group."""

    def __init__(self, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call "
                               "torch.distributed.init_process_group first (e.g. under torchrun)")
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        backend = str(dist.get_backend(group))  # "nccl", "gloo", or e.g. "cpu:gloo,cuda:nccl"
        if "nccl" in backend and "cpu:" not in backend:
            self.device = nccl_device(group)
        else:
            self.device = torch.device("cpu")

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _all_reduce(self, a: np.ndarray, op) -> np.ndarray:
        t = self._tensor(a)
        dist.all_reduce(t, op=op, group=self.group)
        return t.cpu().numpy()

    def sum(self, a):
        return self._all_reduce(a, dist.ReduceOp.SUM)

    def max(self, a):
        return self._all_reduce(a, dist.ReduceOp.MAX)

    def stack(self, a):
        t = self._tensor(a)
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t, group=self.group)
        return np.stack([o.cpu().numpy() for o in out])

    def cat(self, a):
        a = np.asarray(a)
        lengths = self.stack(np.asarray([a.shape[-1]], dtype=np.int64))[:, 0]
        longest = int(lengths.max())
        if longest == 0:
            return a
        pad = np.zeros(a.shape[:-1] + (longest - a.shape[-1],), dtype=a.dtype)
        full = self.stack(np.concatenate([a, pad], axis=-1))
        return np.concatenate([full[r][..., :int(n)] for r, n in enumerate(lengths)], axis=-1)


def _digest(*arrays) -> int:
    """A 63-bit fingerprint of id vectors (None counts as its own value)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"none" if a is None else
                 np.ascontiguousarray(np.asarray(a, dtype=np.int64)).tobytes() + b"|")
    return int.from_bytes(h.digest()[:8], "little") >> 1


def _as_numpy_ids(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _agree(red: TorchReducer, error: Optional[BaseException]) -> None:
    """Raise on every process when any process failed its local checks."""
    failed = red.stack(np.asarray([error is not None], dtype=np.int64))[:, 0]
    if error is not None:
        raise error
    if failed.any():
        ranks = [int(r) for r in np.flatnonzero(failed)]
        raise ValueError(f"distributed.evaluate: the inputs of rank(s) {ranks} failed "
                         "validation (see the error raised there)")


def _layout(red: TorchReducer, shard: Optional[str], P: int, G: int, S: int, dtype_code: int,
            q_ids, g_ids) -> tuple[str, int, int]:
    """(shard, global column of this process's first score column, ... first merge column)."""
    info = red.stack(np.asarray([P, G, S, dtype_code, _digest(*q_ids), _digest(*g_ids)],
                                dtype=np.int64))
    if len(set(info[:, 3].tolist())) > 1:
        raise ValueError("score_mat: every process must hold scores of the same dtype")
    same = lambda c: bool((info[:, c] == info[0, c]).all())  # noqa: E731
    rows_ok = same(1) and same(2) and same(5)
    cols_ok = same(0) and same(4)
    if shard is None:
        if red.size == 1 or (rows_ok and not cols_ok):
            shard = "rows"
        elif cols_ok and not rows_ok:
            shard = "columns"
        elif rows_ok:
            raise ValueError("shard: every process holds the same probe and gallery ids; pass "
                             "shard='rows' or shard='columns'")
        else:
            raise ValueError("shard: the processes share neither the gallery ids (row shards) "
                             "nor the probe ids (column shards)")
    elif shard == "rows" and not rows_ok:
        raise ValueError("shard='rows': every process must hold the whole gallery (the same "
                         "score_mat/merge_score_mat columns, g_* ids and unique_g_pids)")
    elif shard == "columns" and not cols_ok:
        raise ValueError("shard='columns': every process must hold every probe (the same "
                         "score_mat/merge_score_mat rows and q_* ids)")
    r = red.rank
    if shard == "columns":
        return shard, int(info[:r, 1].sum()), int(info[:r, 2].sum())
    return shard, 0, 0


def _own_gpu(red: TorchReducer, device):
    if device is not None and red.device.type == "cuda" and torch.device(device) == \
            torch.device("cuda"):
        return red.device
    return device


def evaluate(score_mat, merge_score_mat, q_pids, q_camids, q_clothes_ids, g_pids, g_camids,
             g_clothes_ids, unique_g_pids, protocol: str = "qme", seed: int = 45,
             device=None, fars: Sequence[float] = metrics.DEFAULT_FARS, *, group=None,
             shard: Optional[str] = None, block_rows: Optional[int] = None,
             ci: Optional[float] = None, n_boot: int = 1000, boot_seed: int = 0,
             boot_unit: str = "subject", larger_is_better: bool = True) -> dict[str, float]:
    """:func:`qme_ext.metrics.evaluate` of matrices sharded over the processes of
    ``group`` (default: the whole world); the same report on every process.

    ``ci=0.95``: the bootstrap intervals of :func:`qme_ext.metrics.evaluate`, bit-identical
    to one process for row and column shards of any layout (the replicate weights are a
    hash of the probe's unit; only the impostors above the select rank are gathered).

    ``shard``: "rows" (probes split), "columns" (gallery and subjects split) or None
    (inferred from the ids, see the module docstring). The other arguments are this
    process's shard and ids, as for :func:`qme_ext.metrics.evaluate`; ``block_rows``
    walks the local shard in row blocks. ``device="cuda"`` (no index) in an NCCL group
    means this process's GPU (:func:`nccl_device`), not ``cuda:0`` on every process.
    ``larger_is_better=False``: the shards hold distances (as :func:`qme_ext.metrics.evaluate`).
    """
    red = TorchReducer(group)
    device = _own_gpu(red, device)
    error, layout, boot = None, None, None
    try:
        metrics._check_protocol(protocol)
        boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
        if shard not in (None,) + SHARDS:
            raise ValueError(f"shard: expected 'rows', 'columns' or None, got {shard!r}")
        S = as_score_matrix(score_mat, "score_mat", device)
        M = as_score_matrix(merge_score_mat, "merge_score_mat", S.device)
        if M.shape[0] != S.shape[0]:
            raise ValueError(f"merge_score_mat: expected {S.shape[0]} rows (one per probe, like "
                             f"score_mat), got shape {tuple(M.shape)}")
        source = TensorSource(S, M, block_rows)
        # the local checks of metrics._evaluate_source, run before any collective
        as_probabilities(fars, "fars")
        metrics._validate_ids(*S.shape, S.device, q_pids, g_pids, q_camids, g_camids,
                              q_clothes_ids, g_clothes_ids, metrics.MODES)
        as_ids(unique_g_pids, "unique_g_pids", M.shape[1], torch.device("cpu"))
        q_ids = [_as_numpy_ids(x) for x in (q_pids, q_camids, q_clothes_ids)]
        g_ids = [_as_numpy_ids(x) for x in (g_pids, g_camids, g_clothes_ids, unique_g_pids)]
        layout = (S.shape[0], S.shape[1], M.shape[1], DTYPE_CODES[S.dtype], q_ids, g_ids)
    except Exception as exc:  # any local failure (bad input, out of memory) must reach
        error = exc  # _agree: a rank that skipped the collective would hang the others
    _agree(red, error)
    shard, col_offset, merge_col_offset = _layout(red, shard, *layout)
    return metrics._evaluate_source(
        source, q_pids, q_camids, q_clothes_ids, g_pids, g_camids, g_clothes_ids, unique_g_pids,
        seed=seed, fars=fars, red=red, shard=shard, col_offset=col_offset,
        merge_col_offset=merge_col_offset, boot=boot, larger_is_better=larger_is_better)


_RAW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _cat_rows(red: TorchReducer, t: torch.Tensor, axis: int) -> torch.Tensor:
    """Concatenate every process's (n, k) tensor `t` along `axis` (bits preserved, any dtype;
    2-byte types travel widened to int32, which gloo supports)."""
    raw = t.contiguous().view(_RAW[t.element_size()]).cpu().numpy()
    wide = raw.astype(np.int32) if raw.dtype == np.int16 else raw
    out = red.cat(wide.T).T if axis == 0 else red.cat(wide)
    return torch.from_numpy(np.ascontiguousarray(out.astype(raw.dtype))).view(t.dtype)


def topk(scores, k: int, largest: bool = True, *, shard: str, group=None):
    """:func:`qme_ext.topk` of a (P, G) score matrix sharded over the processes of
    ``group``: the same :class:`~qme_ext.top_k.TopK` ``(values, indices)``,
    ``(P, k)``, on every process, with global gallery columns.

    ``shard="rows"``: this process holds some probes (all columns); the result
    lists every probe, in rank order. ``shard="columns"``: it holds some gallery
    columns of every probe, the global column order being the processes' shards
    in rank order; ``k`` may exceed a process's own column count.
    """
    from ..ops.topk import MAX_K, topk as topk_op
    from ..top_k import TopK, check_k, check_largest
    red = TorchReducer(group)
    error, t = None, None
    try:
        if shard not in SHARDS:
            raise ValueError(f"shard: expected 'rows' or 'columns', got {shard!r}")
        is_numpy = isinstance(scores, np.ndarray)
        t = as_score_matrix(scores, "scores").detach()
        largest = check_largest(largest)
        k = check_k(k, MAX_K)  # type and range; against the gallery size below
    except Exception as exc:  # any local failure (bad input, out of memory) must reach
        error = exc  # _agree: a rank that skipped the collective would hang the others
    _agree(red, error)
    info = red.stack(np.asarray([t.shape[0], t.shape[1], DTYPE_CODES[t.dtype]], dtype=np.int64))
    if len(set(info[:, 2].tolist())) > 1:
        raise ValueError("scores: every process must hold scores of the same dtype")
    keep = 1 if shard == "rows" else 0  # the axis every process must share
    if not (info[:, keep] == info[0, keep]).all():
        raise ValueError(f"shard={shard!r}: every process must hold "
                         + ("the whole gallery (the same columns)" if keep else
                            "every probe (the same rows)"))
    check_k(k, int(info[0, 1]) if shard == "rows" else int(info[:, 1].sum()))
    if shard == "rows":
        values, indices = topk_op(t, k, largest)
        values, indices = _cat_rows(red, values, 0), _cat_rows(red, indices, 0)
    else:
        v, i = topk_op(t, min(k, t.shape[1]), largest)
        i = i + int(info[:red.rank, 1].sum())
        # rank order keeps tied entries in global column order, so the op's
        # lower-position-first tie rule is the global lower-column-first rule
        cand_v, cand_i = _cat_rows(red, v, 1), _cat_rows(red, i, 1)
        values, pos = topk_op(cand_v.to(t.device), k, largest)
        indices = cand_i.to(t.device).gather(1, pos)
    if is_numpy:
        return TopK(values.cpu().numpy(), indices.cpu().numpy())
    return TopK(values.to(t.device), indices.to(t.device))


def evaluate_embeddings(probe_feats, gallery_feats, *, q_pids, q_camids, q_clothes_ids,
                        g_pids, g_camids, g_clothes_ids, unique_g_pids=None,
                        gallery_templates=None, metric: str = "cosine",
                        larger_is_better: Optional[bool] = None, protocol: str = "qme",
                        seed: int = 45, fars: Sequence[float] = metrics.DEFAULT_FARS,
                        max_memory=None, block_rows: Optional[int] = None, device=None,
                        group=None, ci: Optional[float] = None, n_boot: int = 1000,
                        boot_seed: int = 0, boot_unit: str = "subject") -> dict:
    """:func:`qme_ext.metrics.evaluate_embeddings` of a gallery sharded over the processes of
    ``group``: every process holds every probe (``probe_feats``, the ``q_*`` ids) and some
    gallery entries (``gallery_feats`` and their ``g_*`` ids); the same report on every
    process. It is the column-shard path of :func:`evaluate`: the global gallery order is the
    processes' shards in rank order, and no score leaves its process.

    Templates: each process scores the subjects of its own gallery entries
    (``unique_g_pids``: default, the distinct local ``g_pids``), so a subject's entries must
    all lie on one process (checked; else pass ``gallery_templates`` with your own
    ``unique_g_pids`` per process). Block size: the smallest any process's
    ``max_memory``/``block_rows`` gives.

    Exactness: the report is bit-identical to :func:`evaluate` with ``shard="columns"`` of
    the matrices each process's :func:`~qme_ext.metrics.embedding_matrices` gives (the same
    matmuls). Against one process scoring the whole gallery (shards holding ascending
    subject ranges, so that the template columns keep their order) it agrees up to the
    BLAS's rounding: a BLAS may round an element differently when the gallery tile it
    sits in is cut at another column (seen with torch's CPU sgemm on small tiles).
    """
    from .embeddings import embedding_source
    red = TorchReducer(group)
    device = _own_gpu(red, device)
    error, source, boot, layout, uniq = None, None, None, None, None
    try:
        metrics._check_protocol(protocol)
        boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
        as_probabilities(fars, "fars")
        source, uniq = embedding_source(probe_feats, gallery_feats, g_pids=g_pids,
                                        unique_g_pids=unique_g_pids,
                                        gallery_templates=gallery_templates, metric=metric,
                                        max_memory=max_memory, block_rows=block_rows,
                                        device=device)
        source.check_now()  # bad gallery features: an error every rank agrees on
        metrics._validate_ids(source.num_rows, source.num_cols, source.device, q_pids, g_pids,
                              q_camids, g_camids, q_clothes_ids, g_clothes_ids, metrics.MODES)
        q_ids = [_as_numpy_ids(x) for x in (q_pids, q_camids, q_clothes_ids)]
        g_ids = [_as_numpy_ids(x) for x in (g_pids, g_camids, g_clothes_ids, uniq)]
        layout = (source.num_rows, source.num_cols, source.merge_cols,
                  DTYPE_CODES[source.dtype], q_ids, g_ids)
    except Exception as exc:  # reach _agree on every rank (module docstring)
        error = exc
    _agree(red, error)
    _, col_offset, merge_col_offset = _layout(red, "columns", *layout)
    if gallery_templates is None:
        every = red.cat(np.asarray(uniq, dtype=np.int64))
        if np.unique(every).size != every.size:
            raise ValueError("g_pids: a subject's gallery entries lie on several processes, so "
                             "no process can average its template; shard the gallery by "
                             "subject or pass gallery_templates")
    source.set_block_rows(int(red.stack(np.asarray([source.block_rows], np.int64))[:, 0].min()))
    if larger_is_better is None:
        larger_is_better = metric != "euclidean"
    return metrics._evaluate_source(
        source, q_pids, q_camids, q_clothes_ids, g_pids, g_camids, g_clothes_ids, uniq,
        seed=seed, fars=fars, red=red, shard="columns", col_offset=col_offset,
        merge_col_offset=merge_col_offset, boot=boot, larger_is_better=larger_is_better)
