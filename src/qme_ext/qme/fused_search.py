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
    from .train import _quality_of, estimate_quality
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
    model : a trained :class:`~qme_ext.qme.QME`; run in eval mode (running BatchNorm
        statistics, no dropout) and restored to its mode afterwards.
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
    models = list(model.models)
    k = check_k(k, MAX_K)  # type and range; k <= G is checked once G is known
    largest = check_largest(largest)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile: expected a positive integer, got {tile!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or batch < 1):
        raise ValueError(f"batch: expected a positive integer or None, got {batch!r}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return _search(model, models, scores, k, quality, features, largest, int(tile), batch,
                       dev, const_quality)
    finally:
        model.train(was_training)


def _search(model, models, scores, k, quality, features, largest, tile, batch, dev,
            const_quality) -> TopK:
    runs: list = []  # per probe block: running (values (b, k'), indices (b, k'))
    num_probes, q, col0, is_numpy = None, None, 0, False
    with torch.no_grad():
        for part, width, whole in _tiles(scores, models, tile):
            if num_probes is None:
                num_probes, is_numpy = part.rows, part.is_numpy
                if num_probes == 0:
                    raise ValueError("scores: no probes")
                if whole:  # G is known: refuse k > G before any work
                    check_k(k, part.cols)
                q = _quality(model, quality, features, scores, num_probes, const_quality, dev)
            elif part.rows != num_probes:
                raise ValueError(f"scores: every tile needs the {num_probes} probes, got a tile "
                                 f"with {part.rows}")
            pb = batch or max(1, _TILE_ELEMENTS // max(1, min(width, part.cols)))
            for c0 in range(0, part.cols, width):
                c1 = min(part.cols, c0 + width)
                for b, p0 in enumerate(range(0, num_probes, pb)):
                    p1 = min(num_probes, p0 + pb)
                    fused = model(part.block(p0, p1, c0, c1, dev), None if q is None else q[p0:p1])
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
    if is_numpy:
        return TopK(values.cpu().numpy(), indices.cpu().numpy())
    return TopK(values, indices)
