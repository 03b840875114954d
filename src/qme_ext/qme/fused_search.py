"""QME-fused top-k retrieval without the fused (P, G) matrix.

:func:`search` streams the gallery in column tiles through the fused expert kernel
(``qme_ext::expert_fuse``, via :class:`~qme_ext.qme.QME`) and keeps a running top-k
per probe, merged tile by tile. Memory is O(batch x tile + P x k) whatever G is,
and the result is exactly ``qme_ext.topk(fused, k)`` of the full fused matrix: in
eval mode every fused score depends only on its own probe and column, and the
merge keeps the package order (ties by lower gallery index, NaN last).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from ..ops.topk import topk as _topk_op
from ..top_k import MAX_K, TopK, check_k, check_largest

__all__ = ["search"]

_TILE_ELEMENTS = 1 << 22  # default probes-per-block x tile: fused block of 16 MB (float32)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x if all(s >= 0 for s in x.strides) else np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


class _Channels:
    """K model channels of one column range: (P, g) matrices, or one (P, K, g) cube."""

    def __init__(self, src, models: Sequence[str], name: str):
        if isinstance(src, Mapping):
            missing = [m for m in models if m not in src]
            if missing:
                raise ValueError(f"{name}: missing model(s) {missing}; the QME fuses "
                                 f"{list(models)}")
            self.mats = [_as_tensor(src[m], f"{name}[{m!r}]") for m in models]
            shapes = {tuple(t.shape) for t in self.mats}
            if len(shapes) != 1 or self.mats[0].dim() != 2:
                raise ValueError(f"{name}: expected one (P, G) matrix per model, all of the same "
                                 f"shape; got shapes {[tuple(t.shape) for t in self.mats]}")
            self.cube = None
            self.rows, self.cols = self.mats[0].shape
            self.is_numpy = isinstance(src[models[0]], np.ndarray)
        else:
            self.cube = _as_tensor(src, name)
            if self.cube.dim() != 3 or self.cube.shape[1] != len(models):
                raise ValueError(f"{name}: expected a (P, {len(models)}, G) array of the models "
                                 f"{list(models)} in that order, got shape "
                                 f"{tuple(self.cube.shape)}")
            self.rows, self.cols = self.cube.shape[0], self.cube.shape[2]
            self.is_numpy = isinstance(src, np.ndarray)
        dtypes = {t.dtype for t in (self.mats if self.cube is None else [self.cube])}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise TypeError(f"{name}: expected floating-point scores of one dtype, got {dtypes}")

    def block(self, p0: int, p1: int, c0: int, c1: int, device) -> torch.Tensor:
        """(p1 - p0, K, c1 - c0) scores on `device`; copies only this block."""
        if self.cube is not None:
            return self.cube[p0:p1, :, c0:c1].to(device)
        return torch.stack([m[p0:p1, c0:c1].to(device) for m in self.mats], dim=1)


def _tiles(scores, models, tile: int) -> Iterator[tuple]:
    """(channels, width, whole): gallery column ranges in column order, each fused
    `width` columns at a time (a whole gallery, whole=True, is cut into `tile`
    columns; iterated tiles keep their own width)."""
    from ..io import ScoreSet

    if isinstance(scores, ScoreSet):
        scores = scores.score_mats
    if isinstance(scores, (Mapping, np.ndarray, torch.Tensor)):
        yield _Channels(scores, models, "scores"), tile, True
        return
    if not isinstance(scores, Iterable):
        raise TypeError("scores: expected a ScoreSet, a dict model -> (P, G) scores, a (P, K, G) "
                        f"array, or an iterable of such column tiles; got {type(scores).__name__}")
    for i, t in enumerate(scores):
        part = _Channels(t, models, f"scores tile {i}")
        yield part, max(part.cols, 1), False


def _quality(model, quality, features, scores, num_probes: int, const_quality: float, device):
    """(P,) float32 probe quality on `device`, or None when the QME has one expert."""
    from .modules import QualityEstimator
    from .inference import _quality_of, estimate_quality
    from ..io import ScoreSet

    if isinstance(quality, QualityEstimator):
        if features is not None:
            q = estimate_quality(quality, features)
        elif isinstance(scores, ScoreSet):
            q = _quality_of(quality, scores, "face", const_quality, device)
        else:
            raise ValueError("features: required with a quality estimator, unless scores is a "
                             "ScoreSet holding the quality features")
    elif quality is not None:
        q = _as_tensor(quality, "quality")
    elif model.num_experts == 1:
        return None
    else:  # like predict(): no quality -> the constant gate of the no-QE ablation
        q = np.full(num_probes, const_quality, dtype=np.float32)
    q = torch.as_tensor(q).reshape(-1).to(device=device, dtype=torch.float32)
    if q.shape[0] != num_probes:
        raise ValueError(f"quality: expected {num_probes} values (one per probe), got {q.shape[0]}")
    return q


def _merge(run: Optional[tuple], values: torch.Tensor, indices: torch.Tensor, k: int,
           largest: bool) -> tuple:
    """Top-k of the union of a running top-k and a tile's top-k (columns all higher)."""
    if run is None:
        return values, indices
    # Both parts are sorted best first with ties by column, and every running column
    # precedes every tile column, so position order equals column order among ties.
    v = torch.cat([run[0], values], dim=1)
    i = torch.cat([run[1], indices], dim=1)
    v, pos = _topk_op(v, min(k, v.shape[1]), largest)
    return v, i.gather(1, pos)


def search(model, scores, k: int, quality=None, *, features=None, largest: bool = True,
           tile: int = 65536, batch: Optional[int] = None, device=None,
           const_quality: float = 0.5) -> TopK:
    """Top-k gallery entries of every probe under QME fusion, streamed over gallery tiles.

    Equals ``qme_ext.topk(model(x, q), k)`` on the full (P, K, G) scores ``x``, without
    ever holding the fused (P, G) matrix: each block of ``batch`` probes x ``tile``
    columns is fused by the expert kernel, reduced to its top-k, and merged into a
    running top-k.

    Parameters
    ----------
    model : a trained :class:`~qme_ext.qme.QME`, run in eval mode (running BatchNorm
        statistics, no dropout) and restored to its mode afterwards; or a
        :class:`~qme_ext.qme.Predictor` (issue 26: the values are then exactly its
        ``fuse_block`` scores -- absent modalities imputed, stratum offsets, a baseline
        fusion or single model, per-probe Z-norm -- up to float rounding of the Z-norm's
        statistics, which are summed tile by tile; absence is read off each probe's
        first gallery tile).
    scores : the raw scores of ``model.models``, as one of
        - a :class:`~qme_ext.io.ScoreSet` (its ``score_mats``),
        - a dict ``{model name: (P, G) array or tensor}``,
        - a ``(P, K, G)`` array or tensor, channels in ``model.models`` order,
        - an iterable of column tiles, each a dict ``{name: (P, g_t)}`` or a
          ``(P, K, g_t)`` array, in gallery order; columns are numbered
          consecutively across tiles (for galleries read piece by piece).
    k : 1 <= k <= min(G, 2048).
    quality : probe quality, as ``(P,)`` values in [0, 1], or a
        :class:`~qme_ext.qme.QualityEstimator` (then ``features``, or the ScoreSet's
        quality features ``quality/{qe.quality_name or "face"}``), or None: a
        one-expert QME needs none, otherwise every probe gets ``const_quality``
        (as :func:`~qme_ext.qme.predict` does without a quality estimator).
    features : (P, D) or (P, T, D) quality features for a quality estimator.
    largest : True for the highest fused scores (default).
    tile : gallery columns fused per block (dict/array inputs; iterated tiles keep
        their own width).
    batch : probes fused per block (default: as many as keep batch x tile <= 2^22).
    device : where to fuse (default: the model's device).

    Returns
    -------
    TopK(values, indices), ``(P, k)`` each, rows best first: fused scores (float32,
    float64 for float64 inputs) and int64 gallery columns. numpy arrays when the
    scores are numpy (or a ScoreSet), else tensors on ``device``. Ties and NaN
    follow :func:`qme_ext.topk`.
    """
    from .predictor import Predictor
    pred = model if isinstance(model, Predictor) else None
    if pred is not None:
        model = pred.model
        if pred.kind == "qme" and quality is None and pred.qe is not None:
            quality = pred.qe
        if pred.kind == "qme":
            const_quality = pred.const_quality
    models = list(pred.models if pred is not None else model.models)
    k = check_k(k, MAX_K)  # type and range; k <= G is checked once G is known
    largest = check_largest(largest)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile: expected a positive integer, got {tile!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or batch < 1):
        raise ValueError(f"batch: expected a positive integer or None, got {batch!r}")
    if pred is not None and pred.kind != "qme":
        dev = torch.device(device or "cpu")
        return _search(None, models, scores, k, None, features, largest, int(tile), batch,
                       dev, const_quality, pred)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return _search(model, models, scores, k, quality, features, largest, int(tile), batch,
                       dev, const_quality, pred)
    finally:
        model.train(was_training)


class _PredictorBlocks:
    """A Predictor's fusion of (b, K, n) blocks of a search (fused_search.search): the
    per-probe absence and offsets fixed at the first tile, the Z-norm's row sums."""

    def __init__(self, pred, models, num_probes, q, features, scores):
        from ..io import ScoreSet
        self.pred, self.models, self.q = pred, models, q
        self.absent = self.offset = None
        qn = pred.quality_name
        if features is not None:
            self.quality = {qn: np.asarray(features)}
        elif isinstance(scores, ScoreSet):
            self.quality = dict(scores.quality)
        else:
            self.quality = {}
        self.sums = np.zeros((num_probes, 3)) if pred.scale == "znorm" else None

    def _block(self, x: np.ndarray, p0: int, p1: int):
        from ..io import ScoreSet
        b, n = x.shape[0], x.shape[2]
        z = np.zeros(b, np.int64)
        return ScoreSet(models=list(self.models),
                        score_mats={m: x[:, i] for i, m in enumerate(self.models)},
                        merge_score_mats={}, quality={k: v[p0:p1] for k, v in
                                                      self.quality.items()},
                        q_pids=z, q_camids=z, q_clothes_ids=z, g_pids=np.zeros(n, np.int64),
                        g_camids=np.zeros(n, np.int64), g_clothes_ids=np.zeros(n, np.int64),
                        unique_g_pids=np.zeros(1, np.int64))

    def first(self, part):
        """Absence and offsets of every probe, from the first column range ``part``."""
        if self.pred.kind != "qme" or self.absent is not None:
            return
        x = part.block(0, part.rows, 0, part.cols, "cpu").float().numpy()
        blk = self._block(x, 0, part.rows)
        self.absent = self.pred.absent(x, blk)
        qn = None if self.q is None else self.q.cpu().numpy()
        self.offset = self.pred.offsets(qn if qn is not None else
                                        np.zeros(part.rows, np.float32), self.absent)

    def __call__(self, xb: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
        x = xb.float().cpu().numpy()
        if self.pred.kind == "qme":
            q = None if self.q is None else self.q[p0:p1].cpu()
            ab = None if self.absent is None else self.absent[p0:p1]
            off = self.offset if np.isscalar(self.offset) else self.offset[p0:p1]
            out = self.pred.fuse_cube(x, q, ab, device=xb.device) + off
        else:
            scale, self.pred.scale = self.pred.scale, None
            try:
                out = self.pred.fuse_block(self._block(x, p0, p1))[0]
            finally:
                self.pred.scale = scale
        if self.sums is not None:
            o = out.astype(np.float64)
            self.sums[p0:p1] += np.stack([np.full(o.shape[0], o.shape[1]), o.sum(1),
                                          np.square(o).sum(1)], axis=1)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(xb.device)

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """The top-k values on the predictor's scale (the Z-norm of each whole row)."""
        if self.sums is None:
            return values
        n, s1, s2 = self.sums.T
        mu = s1 / np.maximum(n, 1)
        sd = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mu ** 2, 0.0))
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        v = (values.cpu().double().numpy() - mu[:, None]) / sd[:, None]
        return torch.from_numpy(v.astype(np.float32)).to(values.device)


def _search(model, models, scores, k, quality, features, largest, tile, batch, dev,
            const_quality, pred=None) -> TopK:
    runs: list = []  # per probe block: running (values (b, k'), indices (b, k'))
    num_probes, q, col0, is_numpy, fuse = None, None, 0, False, None
    with torch.no_grad():
        for part, width, whole in _tiles(scores, models, tile):
            if num_probes is None:
                num_probes, is_numpy = part.rows, part.is_numpy
                if num_probes == 0:
                    raise ValueError("scores: no probes")
                if whole:  # G is known: refuse k > G before any work
                    check_k(k, part.cols)
                q = (_quality(model, quality, features, scores, num_probes, const_quality, dev)
                     if model is not None else None)
                fuse = None
                if pred is not None:
                    fuse = _PredictorBlocks(pred, models, num_probes, q, features, scores)
            if fuse is not None:
                fuse.first(part)
            elif part.rows != num_probes:
                raise ValueError(f"scores: every tile needs the {num_probes} probes, got a tile "
                                 f"with {part.rows}")
            pb = batch or max(1, _TILE_ELEMENTS // max(1, min(width, part.cols)))
            for c0 in range(0, part.cols, width):
                c1 = min(part.cols, c0 + width)
                for b, p0 in enumerate(range(0, num_probes, pb)):
                    p1 = min(num_probes, p0 + pb)
                    xb = part.block(p0, p1, c0, c1, dev)
                    fused = (model(xb, None if q is None else q[p0:p1]) if fuse is None
                             else fuse(xb, p0, p1))
                    v, i = _topk_op(fused, min(k, c1 - c0), largest)
                    merged = _merge(runs[b] if b < len(runs) else None, v, i + (col0 + c0), k,
                                    largest)
                    if b < len(runs):
                        runs[b] = merged
                    else:
                        runs.append(merged)
            col0 += part.cols
    if num_probes is None:
        raise ValueError("scores: no gallery tiles")
    check_k(k, col0)
    values = torch.cat([r[0] for r in runs])
    indices = torch.cat([r[1] for r in runs])
    if fuse is not None:
        values = fuse.finish(values)
    if is_numpy:
        return TopK(values.cpu().numpy(), indices.cpu().numpy())
    return TopK(values, indices)
