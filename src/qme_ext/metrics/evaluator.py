"""A stateful evaluator for training loops (issue 30): feed features batch by batch,
get :func:`~qme_ext.metrics.evaluate_embeddings`' report at the end of the epoch.

::

    ev = Evaluator(metric="cosine")
    with torch.no_grad():
        for x, pid, cam, is_q in loader:
            ev.update(model(x), pid, cam, is_query=is_q)
    report = ev.compute()          # {"GR_top1": ..., "GR_mAP": ..., "GR_RP": ..., ...}
    ev.reset()

Roles (``is_query``)
--------------------
``True``: the batch's entries are probes (queries); ``False``: gallery entries; a (B,) bool
mask: per entry; ``"both"``: each entry is a probe *and* a gallery entry (one set ranked
against itself, pytorch-metric-learning's ``query = reference``): its own gallery entry is
then junk (same pid, same camera; see below) and never counted.

Ids
---
``pids`` are required. ``camids=None`` gives every entry a camera of its own (its index in
the update order), so nothing but an entry's own copy shares its camera: separate probe and
gallery sets have no junk (every same-pid entry is good, the setting of face and
metric-learning benchmarks) and a ``"both"`` entry's self match is junk. With ``camids``
given, GR follows the ReID rule (same pid and camera is junk), which also removes the
self match. ``clothes=None`` gives every entry clothes 0 (so SC equals GR and CC has no
good entries; its keys are 0 with every probe skipped). ``camids``/``clothes`` must be
given in every update or in none.

Result
------
:meth:`compute` is ``evaluate_embeddings(probe_feats, gallery_feats, ...)`` of the
features in update order (probes: the entries with the probe role, gallery: those with
the gallery role), with this object's options: the same dict, bit for bit, as that call
on the concatenated arrays (tested). The state is kept; :meth:`reset` drops it.

Memory
------
Every feature is kept until :meth:`reset`: (N, D) values in the dtype they came in, on the
device they came on (``store_on="cpu"`` moves them to host memory), plus three int64 ids
and one role byte per entry -- O(N D) growth per epoch, like fast-reid's ``ReidEvaluator``
and torchmetrics' retrieval metrics. Each update stores a detached copy: no autograd graph
is kept and later in-place changes of the caller's tensors do not reach the state.
:meth:`compute` adds a probe and a gallery copy of the features and the block of scores
that ``max_memory`` bounds (:func:`~qme_ext.metrics.evaluate_embeddings`).

Several processes
-----------------
When ``torch.distributed`` is initialised with more than one process (``group``: default
the world), :meth:`compute` gathers every process's entries in rank order (ids with
``all_gather``; features as raw bytes, so any dtype travels on gloo and NCCL). With
``split="probes"`` (default) each process then scores a share of the probes -- whole
chunks of :data:`~qme_ext.metrics.embeddings.MATMUL_ROWS` (256) probes, so every matmul
has its one-process shape -- against the whole gallery, and the per-probe states are
reduced as :func:`qme_ext.distributed.evaluate` reduces row shards; with fewer chunks
than processes, or ``split="none"``, every process scores everything. Either way each
process gets the same report, bit-identical to one process fed the ranks' batches in rank
order (tested with 2 gloo processes). Every process holds the world's features
(O(N_total D) each) while :meth:`compute` runs. Gathering was chosen over evaluating
gallery shards in place (:func:`qme_ext.distributed.evaluate_embeddings`): that needs all
of a subject's gallery entries on one process (its open-set template), which a
``DistributedSampler`` does not give. A sampler that pads its last batch by repeating
samples makes those samples count twice, as they would in one process fed them twice.
Every process must call :meth:`compute` (it holds collectives); a process without
updates takes part with no entries. ``distributed=False`` evaluates the local entries only.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from .core import DEFAULT_FARS

__all__ = ["Evaluator"]

_PROBE, _GALLERY = 1, 2
SPLITS = ("probes", "none")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_features(x, name: str) -> torch.Tensor:
    """A detached copy of (B, D) features as a torch tensor (numpy or torch input)."""
    if isinstance(x, np.ndarray):
        if x.dtype.type not in (np.float16, np.float32, np.float64):
            raise TypeError(f"{name}: expected float16, float32 or float64 features, got "
                            f"dtype {x.dtype}")
        t = torch.from_numpy(np.array(x))  # own copy
    elif isinstance(x, torch.Tensor):
        if x.dtype not in _DTYPES:
            raise TypeError(f"{name}: expected float16, bfloat16, float32 or float64 "
                            f"features, got dtype {x.dtype}")
        t = x.detach().clone()
    else:
        raise TypeError(f"{name}: expected a torch tensor or numpy array of features, got "
                        f"{type(x).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (B, D) feature batch, got shape "
                         f"{tuple(t.shape)}")
    return t


def _as_batch_ids(x, name: str, n: int) -> np.ndarray:
    """(n,) int64 ids from a tensor, array or sequence of integers."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 0 and n == 1:
        a = a.reshape(1)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one per feature row), got "
                         f"{tuple(a.shape)}")
    if a.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def _roles(is_query, n: int) -> np.ndarray:
    """(n,) uint8 role bits (1 probe, 2 gallery) from ``is_query``."""
    if isinstance(is_query, str):
        if is_query != "both":
            raise ValueError(f"is_query: expected True, False, 'both' or a ({n},) bool mask, "
                             f"got {is_query!r}")
        return np.full(n, _PROBE | _GALLERY, dtype=np.uint8)
    if isinstance(is_query, (bool, np.bool_)):
        return np.full(n, _PROBE if is_query else _GALLERY, dtype=np.uint8)
    m = is_query.detach().cpu().numpy() if isinstance(is_query, torch.Tensor) \
        else np.asarray(is_query)
    if m.shape != (n,) or m.dtype != np.bool_:
        raise ValueError(f"is_query: expected True, False, 'both' or a ({n},) bool mask, got "
                         f"{m.dtype} of shape {tuple(m.shape)}")
    return np.where(m, _PROBE, _GALLERY).astype(np.uint8)


def _gather_entries(local: tuple, has_cams, has_clothes, group) -> tuple:
    """Every process's (features, pids, camids, clothes, roles) in rank order, and whether
    camera / clothes ids were given; the same on every process. A process without entries
    contributes none; the processes with entries must agree on width, dtype and ids given."""
    from .distributed import TorchReducer, _agree
    red = TorchReducer(group)
    feats, p, c, k, r = local
    n = p.size
    dtype_code = -1 if feats is None else _DTYPES.index(feats.dtype)
    width = 0 if feats is None else int(feats.shape[1])
    info = red.stack(np.asarray([n, width, dtype_code, int(bool(has_cams)),
                                 int(bool(has_clothes))], dtype=np.int64))
    live = info[info[:, 0] > 0]
    error = None
    if live.size and any(len(set(live[:, j].tolist())) > 1 for j in (1, 2, 3, 4)):
        error = ValueError("Evaluator.compute: the processes' entries differ in feature "
                           "width, dtype or the ids given (camids/clothes): "
                           f"{live[:, 1:].tolist()}")
    _agree(red, error)
    if not live.size:
        raise ValueError("Evaluator.compute: no process holds any entry (call update first)")
    width, dtype = int(live[0, 1]), _DTYPES[int(live[0, 2])]
    if feats is None:
        feats = torch.zeros((0, width), dtype=dtype)
    home = feats.device
    # features travel as raw bytes: any dtype goes over gloo and NCCL alike
    raw = feats.contiguous().view(torch.uint8).to(red.device)
    longest = int(info[:, 0].max())
    pad = torch.zeros((longest - n, raw.shape[1]), dtype=torch.uint8, device=red.device)
    parts = [torch.empty((longest, raw.shape[1]), dtype=torch.uint8, device=red.device)
             for _ in range(red.size)]
    import torch.distributed as dist
    dist.all_gather(parts, torch.cat([raw, pad]), group=group)
    every = torch.cat([t[:int(m)] for t, m in zip(parts, info[:, 0])]).to(home)
    every = every.view(dtype)
    ids = [red.cat(a) for a in (p, c, k, r.astype(np.int64))]
    return (every, ids[0], ids[1], ids[2], ids[3].astype(np.uint8), bool(live[0, 3]),
            bool(live[0, 4]))


class Evaluator:
    """Accumulates (features, ids, role) batches; :meth:`compute` returns the
    :func:`~qme_ext.metrics.evaluate_embeddings` report (module docstring).

    Parameters (keywords; passed to ``evaluate_embeddings`` as they are): ``metric``
    ("cosine", "dot", "euclidean"), ``fars``, ``seed``, ``max_memory``, ``device`` (where
    the matmuls and passes run; default the features' device), ``ci``, ``n_boot``,
    ``boot_seed``, ``boot_unit``. Own options: ``store_on`` (device the kept features live
    on; default where each batch came), ``group`` (a ``torch.distributed`` group) and
    ``distributed`` (None: gather when a group of more than one process is initialised;
    False: local entries only; True: require one) and ``split`` (under ``torch.distributed``:
    ``"probes"`` each process scores a share of the probes, ``"none"`` each scores all;
    module docstring).
    """

    def __init__(self, *, metric: str = "cosine", fars: Sequence[float] = DEFAULT_FARS,
                 seed: int = 45, max_memory=None, device=None, ci: Optional[float] = None,
                 n_boot: int = 1000, boot_seed: int = 0, boot_unit: str = "subject",
                 store_on=None, group=None, distributed: Optional[bool] = None,
                 split: str = "probes"):
        from .embeddings import METRICS
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
        if distributed not in (None, True, False):
            raise ValueError(f"distributed: expected None, True or False, got {distributed!r}")
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
        self.split = split
        self.options = dict(metric=metric, fars=tuple(fars), seed=seed, max_memory=max_memory,
                            device=device, ci=ci, n_boot=n_boot, boot_seed=boot_seed,
                            boot_unit=boot_unit)
        self.store_on = None if store_on is None else torch.device(store_on)
        self.group, self.distributed = group, distributed
        self.reset()

    # ---- state ------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every stored entry (the options stay)."""
        self._feats: list[torch.Tensor] = []
        self._ids: list[tuple] = []  # (pids, camids or None, clothes or None, roles) per batch
        self._has_cams: Optional[bool] = None
        self._has_clothes: Optional[bool] = None

    @property
    def num_entries(self) -> int:
        """Entries stored by this process."""
        return sum(int(f.shape[0]) for f in self._feats)

    def update(self, features, pids, camids=None, clothes=None,
               is_query: Union[bool, str, np.ndarray, torch.Tensor] = True) -> None:
        """Store one batch: ``features`` (B, D) torch (CPU/CUDA) or numpy, float16/bfloat16/
        float32/float64; ``pids``, ``camids``, ``clothes`` (B,) integer ids (tensors, arrays
        or lists); ``is_query`` True / False / ``"both"`` / (B,) bool mask."""
        f = _as_features(features, "features")
        B = int(f.shape[0])
        if self._feats:
            first = self._feats[0]
            if f.shape[1] != first.shape[1]:
                raise ValueError(f"features: expected {first.shape[1]} columns like the "
                                 f"earlier batches, got {f.shape[1]}")
            if f.dtype != first.dtype:
                raise TypeError(f"features: expected dtype {first.dtype} like the earlier "
                                f"batches, got {f.dtype}")
        p = _as_batch_ids(pids, "pids", B)
        c = None if camids is None else _as_batch_ids(camids, "camids", B)
        k = None if clothes is None else _as_batch_ids(clothes, "clothes", B)
        for name, given, seen in (("camids", c is not None, self._has_cams),
                                  ("clothes", k is not None, self._has_clothes)):
            if seen is not None and given != seen:
                raise ValueError(f"{name}: give them in every update or in none (earlier "
                                 f"batches {'had' if seen else 'had none'})")
        roles = _roles(is_query, B)
        if B == 0:
            return
        if self.store_on is not None:
            f = f.to(self.store_on)
        self._has_cams, self._has_clothes = c is not None, k is not None
        self._feats.append(f)
        self._ids.append((p, c, k, roles))

    # ---- result -----------------------------------------------------------------------
    def _local(self):
        """(features (N, D) or None, pids, camids, clothes, roles) of this process."""
        if not self._feats:
            return None, *(np.zeros(0, np.int64) for _ in range(3)), np.zeros(0, np.uint8)
        feats = torch.cat([f.to(self._feats[0].device) for f in self._feats])
        p, c, k, r = (np.concatenate([b[j] if b[j] is not None else
                                      np.zeros(b[0].size, np.int64) for b in self._ids])
                      for j in range(4))
        return feats, p, c, k, r.astype(np.uint8)

    def _use_distributed(self) -> bool:
        import torch.distributed as dist
        on = dist.is_available() and dist.is_initialized() and \
            dist.get_world_size(self.group) > 1
        if self.distributed is True and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True: torch.distributed is not initialised")
        return on if self.distributed is None else bool(self.distributed)

    def compute(self) -> dict:
        """The report of every stored entry (of every process under ``torch.distributed``);
        the state is kept. Raises ValueError when there is no probe or no gallery entry."""
        shared = self._use_distributed()
        if shared:
            feats, p, c, k, r, has_cams, has_clothes = _gather_entries(
                self._local(), self._has_cams, self._has_clothes, self.group)
        else:
            feats, p, c, k, r = self._local()
            has_cams, has_clothes = bool(self._has_cams), bool(self._has_clothes)
        return self._evaluate(feats, p, c if has_cams else None,
                              k if has_clothes else None, r, shared and self.split == "probes")

    def _evaluate(self, feats, pids, camids, clothes, roles, split: bool) -> dict:
        from .embeddings import MATMUL_ROWS, evaluate_embeddings
        qi, gi = np.flatnonzero(roles & _PROBE), np.flatnonzero(roles & _GALLERY)
        if qi.size == 0 or gi.size == 0:
            raise ValueError(f"Evaluator.compute: needs probe and gallery entries, got "
                             f"{qi.size} probes and {gi.size} gallery entries (is_query)")
        n = pids.size
        cams = np.arange(n, dtype=np.int64) if camids is None else camids
        clo = np.zeros(n, np.int64) if clothes is None else clothes
        take = lambda idx: feats.index_select(0, torch.from_numpy(idx).to(feats.device))  # noqa: E731
        g_ids = dict(g_pids=pids[gi], g_camids=cams[gi], g_clothes_ids=clo[gi])
        if split:
            import torch.distributed as dist
            world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
            chunks = -(-qi.size // MATMUL_ROWS)
            if chunks >= world:  # else too few probes to share: every process scores all
                mine = np.array_split(np.arange(chunks), world)[rank]
                qi = qi[mine[0] * MATMUL_ROWS:(mine[-1] + 1) * MATMUL_ROWS]
                return _probe_share(take(qi), take(gi), pids[qi], cams[qi], clo[qi], g_ids,
                                    self.options, self.group)
        return evaluate_embeddings(take(qi), take(gi), q_pids=pids[qi], q_camids=cams[qi],
                                   q_clothes_ids=clo[qi], **g_ids, **self.options)


def _probe_share(probes, gallery, q_pids, q_camids, q_clothes, g_ids: dict, options: dict,
                 group) -> dict:
    """The report of every process's probe share (whole chunks of MATMUL_ROWS probes, so
    that every matmul has the shape it has in one process) against the whole gallery,
    reduced as :func:`qme_ext.distributed.evaluate` reduces row shards."""
    from . import bootstrap, core
    from .distributed import TorchReducer, _agree
    from .embeddings import embedding_source
    o = dict(options)
    red, error, source, uniq, boot = TorchReducer(group), None, None, None, None
    try:  # a bad probe share fails on its process: raise it on every process
        boot = bootstrap.options(o.pop("ci"), o.pop("n_boot"), o.pop("boot_seed"),
                                 o.pop("boot_unit"))
        source, uniq = embedding_source(probes, gallery, g_pids=g_ids["g_pids"],
                                        metric=o["metric"], max_memory=o["max_memory"],
                                        device=o["device"])
    except Exception as exc:
        error = exc
    _agree(red, error)
    return core._evaluate_source(source, q_pids, q_camids, q_clothes, g_ids["g_pids"],
                                 g_ids["g_camids"], g_ids["g_clothes_ids"], uniq,
                                 seed=o["seed"], fars=o["fars"], red=red,
                                 shard="rows", boot=boot,
                                 larger_is_better=o["metric"] != "euclidean")
