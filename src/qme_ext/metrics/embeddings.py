"""Embeddings in, metrics out (issue 21): the :func:`~qme_ext.metrics.evaluate` report of
probe and gallery features, without the (P, G) score matrix ever existing.

:func:`evaluate_embeddings` feeds the evaluation engine a block source
(:class:`EmbeddingSource`) whose row blocks are computed on demand: a block of ``b``
probes is scored against the gallery by one matmul per gallery tile
(:data:`GALLERY_TILE` rows; torch CPU BLAS, or CUDA when the features are there), handed
to the engine's passes (:mod:`qme_ext.metrics.accumulate`, the ones
:func:`~qme_ext.metrics.evaluate_file` streams a file through) and dropped. Memory is
O(b x G + P + G): one block of scores plus per-probe and per-gallery vectors.

Scores (``metric=``)
--------------------
* ``"cosine"`` (default): rows L2-normalised (in the compute dtype), then the dot product;
* ``"dot"``: the raw inner product;
* ``"euclidean"``: ``sqrt(max(|p|^2 + |g|^2 - 2 p.g, 0))``, a distance: evaluated as its
  negation, thresholds reported in distance units (accept ``d <= t``;
  :mod:`qme_ext.metrics.orientation`). Squared distances rank the same; only the
  thresholds would differ.

Features are computed in float32 (float16/bfloat16/float32 inputs) or float64 (float64
inputs); the scores are that dtype.

Open-set templates (``merge_score_mat``, docs/definitions.rst, §0)
-------------------------------------------------
One template per subject of ``unique_g_pids`` (default: the sorted distinct ``g_pids``):
the mean of the subject's gallery features (``cosine``: of their L2-normalised features,
insightface's IJB template rule, the mean then normalised again by the cosine), summed in
float64 in gallery order, then scored like a gallery entry. ``gallery_templates=`` (S, D)
gives them instead (row i = subject ``unique_g_pids[i]``).

Exactness
---------
The report is bit-identical to :func:`~qme_ext.metrics.evaluate` of the matrices
:func:`embedding_matrices` returns (the same tiles, the same matmuls). A BLAS rounds an
element differently with the shape of the product it sits in (torch's CPU sgemm does, by
the number of probe rows and, for narrow tiles, of gallery columns), so the matmuls have
fixed shapes: :data:`MATMUL_ROWS` probes at offsets that are multiples of it, times
:data:`GALLERY_TILE` gallery rows at fixed offsets, and engine blocks are whole multiples of
:data:`MATMUL_ROWS` rows. The report is therefore the same for every ``max_memory`` or
``block_rows`` that holds :data:`MATMUL_ROWS` probe rows (below that, the matmuls have
``block_rows`` rows, and another size may round differently). The scores agree with a
plain ``probe @ gallery.T`` to float32 rounding, not bit for bit.

Bad input
---------
Features of a different width (probe vs gallery vs templates), NaN/inf features and,
under ``cosine``, zero-norm vectors are each a ``ValueError`` naming the argument, the
number of rows and the first one: a cosine of a zero vector is undefined, and the engine
is never handed a NaN that the user did not give.

Finite features never give a non-finite score (issue 27): under ``cosine`` a row whose
norm would underflow or overflow the compute dtype (features scaled by 1e-30 or 1e30) is
divided by its largest magnitude before it is normalised; under ``euclidean`` features
whose squares would leave the dtype's range are scaled by a power of two (exact) and the
distances scaled back; under ``dot``, where the scale is the score's, features whose
largest possible product (the two largest norms, in float64) is beyond the dtype's range,
or so small that every product underflows, are a ``ValueError`` naming both arguments.
Features in the usual range are computed exactly as before (no scaling applied). The
scale and the range need the largest gallery norm before any score, so under ``dot`` and
``euclidean`` the gallery is checked (and its mean templates summed) in one read of the
features before the first walk; under ``cosine`` that read rides on the first walk.

Fusion
------
``probe_feats`` and ``gallery_feats`` may be dicts ``{model: features}``: each block is
scored per model and fused before the passes, with a fitted
:class:`qme_ext.fusion.FusionResult` (:func:`qme_ext.fusion.fit_fusion` on a calibration
ScoreSet; applied as :func:`~qme_ext.metrics.evaluate_file` applies it) or a trained
QME (:class:`qme_ext.qme.QME`, run in eval mode on ``(b, K, G)`` blocks as
:func:`qme_ext.qme.search` runs it). Fusion needs similarities: ``metric`` "cosine" or "dot".
"""
from __future__ import annotations

import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..ops.inputs import as_ids, check_device, check_target_device
from .accumulate import Block, BlockSource, check_block_rows
from .core import DEFAULT_FARS
from .streaming import (_handed_over, _max_group, bytes_per_row, parse_memory,
                        rows_per_block)

__all__ = ["METRICS", "GALLERY_TILE", "FeatureArray", "EmbeddingSource", "embedding_source",
           "embedding_matrices", "evaluate_embeddings"]

METRICS = ("cosine", "dot", "euclidean")
# gallery rows per matmul: fixed, so that no score depends on the memory budget
GALLERY_TILE = 16384
# probe rows per matmul, at fixed offsets (multiples of it): a BLAS rounds an element
# differently with the number of rows it is given (seen with torch's CPU sgemm), so the
# engine's blocks are whole multiples of it and every score is the same for any budget
# that holds MATMUL_ROWS probe rows
MATMUL_ROWS = 256
# gallery rows per float64 template sum (their float64 copy: 16 MiB at 512-d)
_SUM_ROWS = 4096
# engine blocks per probe row when no budget is given: about 256 MiB of float32 scores
_DEFAULT_BLOCK_BYTES = 256 * 1024 ** 2


class FeatureArray:
    """(N, D) features read in row slices: a numpy array (or ``np.memmap`` / ``np.load(...,
    mmap_mode="r")``), a torch tensor (CPU or CUDA) or an HDF5 dataset (``h5py.Dataset``,
    read slice by slice). float16, bfloat16 (torch), float32, float64."""

    def __init__(self, x, name: str):
        self.name = name
        if isinstance(x, torch.Tensor):
            check_device(x, name)
            self.data, self.kind, dtype = x.detach(), "torch", x.dtype
            ok = x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        elif isinstance(x, np.ndarray):
            self.data, self.kind, dtype = x, "numpy", x.dtype
            ok = x.dtype.type in (np.float16, np.float32, np.float64)
        elif hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "id"):  # h5py.Dataset
            self.data, self.kind, dtype = x, "h5", np.dtype(x.dtype)
            ok = dtype.type in (np.float16, np.float32, np.float64)
        else:
            raise TypeError(f"{name}: expected a numpy array, torch tensor or HDF5 dataset of "
                            f"features, got {type(x).__name__}")
        if not ok:
            raise TypeError(f"{name}: expected float16, bfloat16, float32 or float64 features, "
                            f"got dtype {dtype}")
        if len(x.shape) != 2:
            raise ValueError(f"{name}: expected a 2-D (N, D) feature array, got shape "
                             f"{tuple(x.shape)}")
        self.num, self.dim = int(x.shape[0]), int(x.shape[1])
        if self.num == 0 or self.dim == 0:
            raise ValueError(f"{name}: empty feature array of shape {tuple(x.shape)}")
        wide = dtype == torch.float64 if self.kind == "torch" else dtype.type is np.float64
        self.compute_dtype = torch.float64 if wide else torch.float32
        self.device = x.device if self.kind == "torch" else torch.device("cpu")

    def rows(self, a: int, b: int, device) -> torch.Tensor:
        """(b - a, D) rows in the compute dtype on ``device`` (read only these rows)."""
        if self.kind == "torch":
            t = self.data[a:b]
        else:
            part = np.asarray(self.data[a:b])
            if not part.flags.writeable:  # a read-only memory map: torch wants its own copy
                part = np.array(part)
            t = torch.from_numpy(np.ascontiguousarray(part))
        # row-major rows whatever the input's strides: the BLAS picks its kernel (and its
        # rounding) by layout, and the scores must not depend on it
        return t.to(device=device, dtype=self.compute_dtype).contiguous()


def _safe_norms(dtype) -> tuple:
    """(lo, hi): row norms inside this range are computed without under- or overflow."""
    fi = torch.finfo(dtype)
    return fi.tiny ** 0.5 * 2.0 ** 12, fi.max ** 0.5 / 2.0 ** 12


def _max_norm(t: torch.Tensor) -> float:
    """The largest row norm of ``t``, in float64 (rows scaled first where the dtype's own
    norm would under- or overflow: never inf for finite rows of any dtype)."""
    n = torch.linalg.vector_norm(t, dim=1)
    lo, hi = _safe_norms(t.dtype)
    if bool(((n > lo) & (n < hi)).all()):  # the usual case: one norm pass in the dtype
        return float(n.max())
    m = t.abs().amax(dim=1, keepdim=True).to(torch.float64)
    scaled = t.to(torch.float64) / torch.where(m > 0, m, 1.0)
    return float((torch.linalg.vector_norm(scaled, dim=1) * m[:, 0]).max())


def _first_bad(bad: torch.Tensor, offset: int, found: list) -> None:
    n = int(bad.sum())
    if n:
        if not found:
            found.append(offset + int(torch.nonzero(bad)[0, 0]))
        found.append(n)


class _RowCheck:
    """The NaN/inf and (cosine) zero-norm rows of one feature array, tile by tile,
    raised as one ValueError naming the array by :meth:`finish`."""

    def __init__(self, feats: FeatureArray, metric: str):
        self.name, self.metric = feats.name, metric
        self.nonfinite, self.zero = [], []
        self.largest = 0.0  # the largest row norm, float64 (dot, euclidean: their range)

    def tile(self, a: int, t: torch.Tensor, row_sum: Optional[torch.Tensor] = None) -> None:
        """Rows a.. of the features, ``t`` (n, D). ``row_sum`` (n,): a per-row reduction
        of ``t`` that a NaN/inf value makes non-finite and (cosine) an all-zero row makes
        0 (the row norm the cosine computes anyway): only the rows it flags are checked
        element by element (a flag that is an overflow or underflow of finite values is
        cleared there), so a clean tile costs no elementwise pass. Under dot and
        euclidean the largest row norm of clean tiles is kept (their range needs it)."""
        self._check(a, t, row_sum)
        if self.metric != "cosine" and not self.nonfinite:  # every row so far is finite
            self.largest = max(self.largest, _max_norm(t))

    def _check(self, a: int, t: torch.Tensor, row_sum: Optional[torch.Tensor]) -> None:
        if row_sum is None:
            nonfinite, zero = ~torch.isfinite(t).all(dim=1), (t == 0).all(dim=1)
        else:
            flag = ~torch.isfinite(row_sum)
            if self.metric == "cosine":
                flag |= row_sum == 0
            rows = torch.nonzero(flag).reshape(-1)
            if rows.numel() == 0:
                return
            sub = t[rows]
            nonfinite = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
            zero = torch.zeros_like(nonfinite)
            nonfinite[rows] = ~torch.isfinite(sub).all(dim=1)
            zero[rows] = (sub == 0).all(dim=1)
        _first_bad(nonfinite, a, self.nonfinite)
        if self.metric == "cosine":
            _first_bad(zero, a, self.zero)

    def finish(self) -> None:
        for what, found in (("non-finite (NaN/inf) values", self.nonfinite),
                            ("zero norm, for which a cosine is undefined", self.zero)):
            if found:
                raise ValueError(f"{self.name}: {sum(found[1:])} row(s) with {what} (first: "
                                 f"row {found[0]}); drop or repair them (e.g. a failed "
                                 f"detection)")


def _bad_rows(feats: FeatureArray, metric: str, device, rows: int = GALLERY_TILE) -> float:
    """Raise ValueError for NaN/inf rows or (cosine) zero-norm rows of ``feats``; the
    largest row norm (float64; dot and euclidean only, else 0) otherwise."""
    check = _RowCheck(feats, metric)
    for a in range(0, feats.num, rows):
        check.tile(a, feats.rows(a, min(a + rows, feats.num), device))
    check.finish()
    return check.largest


def _prepare(t: torch.Tensor, metric: str, norms: Optional[list] = None) -> torch.Tensor:
    """Rows as the matmul reads them: L2-normalised under cosine, else unchanged;
    the cosine's row norms (n, 1) are appended to ``norms`` when given. A row whose norm
    leaves the dtype's safe range is divided by its largest magnitude first (module
    docstring); the others are normalised as they always were. The norms appended are
    those of the rows as given (0 or inf flags the row for the check)."""
    if metric != "cosine":
        return t
    n = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    if norms is not None:
        norms.append(n)
    lo, hi = _safe_norms(t.dtype)
    bad = ~((n > lo) & (n < hi))
    if bool(bad.any()):
        m = t.abs().amax(dim=1, keepdim=True)
        t = torch.where(bad, t / torch.where(m > 0, m, 1.0), t)
        n = torch.where(bad, torch.linalg.vector_norm(t, dim=1, keepdim=True), n)
    return t / n


def _scores(p: torch.Tensor, g: torch.Tensor, metric: str, p_sq=None, g_sq=None) -> torch.Tensor:
    """(b, g) scores of prepared probe rows p (b, D) and gallery rows g (g, D); under
    euclidean ``p_sq`` (b,) and ``g_sq`` (g,) are the squared norms."""
    s = p @ g.T
    if metric == "euclidean":
        s = (p_sq[:, None] + g_sq[None, :] - 2.0 * s).clamp_min_(0).sqrt_()
    return s


class _GalleryPass:
    """What the first read of the gallery also does, tile by tile: the NaN/inf and
    zero-norm check and (mean templates) the per-subject float64 sums in gallery order.
    It rides on the first scoring walk (the tiles are read and prepared there anyway),
    so the gallery is read once per walk and never for the checks alone."""

    def __init__(self, model: "_Model"):
        self.model = model
        self.check = _RowCheck(model.gallery, model.metric)
        self.sums = None
        if model.templates is None:  # the mean templates (the pids were checked)
            self.sums = torch.zeros(model.uniq.size, model.gallery.dim, dtype=torch.float64,
                                    device=model.device)
            self.col_t = torch.from_numpy(np.where(model.member, model.col, -1)).to(
                model.device)

    def tile(self, a: int, t: torch.Tensor, g: torch.Tensor, norms: list, g_sq) -> None:
        """Rows a.. : ``t`` as read (the model's dtype), ``g`` prepared."""
        metric = self.model.metric
        row_sum = (norms[0].reshape(-1) if metric == "cosine"
                   else g_sq if metric == "euclidean" else t.sum(1))
        self.check.tile(a, t, row_sum)
        if self.sums is not None:
            # index_put_(accumulate=True) adds row by row in index order on the CPU (a
            # serial kernel): the float64 sums of every subject in gallery order, the same
            # bits as a loop. index_add_ gives those bits too but, with a subject's rows
            # side by side (a gallery sorted by subject), ran 40 ms per call of 1,024 rows
            # on a loaded 2-core machine; slices bound the float64 copy (16 MiB at 512-d)
            for c0 in range(0, t.shape[0], _SUM_ROWS):
                cols = self.col_t[a + c0:a + min(c0 + _SUM_ROWS, t.shape[0])]
                part = g[c0:c0 + _SUM_ROWS]
                keep = cols >= 0
                if not bool(keep.all()):
                    cols, part = cols[keep], part[keep]
                if self.sums.device.type == "cpu":
                    self.sums.index_put_((cols,), part.to(torch.float64), accumulate=True)
                else:
                    self.sums.index_add_(0, cols, part.to(torch.float64))

    def finish(self) -> None:
        self.check.finish()
        mod = self.model
        if self.sums is not None:
            counts = torch.from_numpy(mod.counts).to(mod.device, torch.float64)
            mod.set_templates((self.sums / counts[:, None]).to(mod.dtype))
        mod.g_max = max(mod.g_max, self.check.largest)
        mod.gallery_checked = True


class _Model:
    """One model's probe and gallery features, checked, with its subject templates.

    The gallery is checked, and its mean templates summed, in the first read of its
    tiles (:class:`_GalleryPass`): the first scoring walk, or :meth:`ensure_gallery`
    when templates are wanted before any scores."""

    def __init__(self, probes: FeatureArray, gallery: FeatureArray, metric: str, device,
                 g_pids: np.ndarray, uniq: np.ndarray, templates=None):
        if probes.dim != gallery.dim:
            raise ValueError(f"{gallery.name}: expected {probes.dim} features per row (like "
                             f"{probes.name}), got shape ({gallery.num}, {gallery.dim})")
        self.gallery, self.metric, self.device, self.uniq = gallery, metric, device, uniq
        self.dtype = torch.promote_types(probes.compute_dtype, gallery.compute_dtype)
        p_max = _bad_rows(probes, metric, device)
        self.probes = _prepare(probes.rows(0, probes.num, device).to(self.dtype), metric)
        self.templates = self.t_sq = None
        self.gallery_checked, self.scale, self.g_max = False, 1.0, 0.0
        if templates is None:
            self.col = np.searchsorted(uniq, g_pids).clip(max=uniq.size - 1)
            self.member = uniq[self.col] == g_pids
            self.counts = np.bincount(self.col[self.member], minlength=uniq.size)
            if (self.counts == 0).any():
                missing = uniq[self.counts == 0]
                raise ValueError(f"unique_g_pids: {missing.size} subject(s) have no gallery "
                                 f"entry (first: {missing[0]}), so no template; pass "
                                 f"gallery_templates")
        else:
            tf = FeatureArray(templates, "gallery_templates")
            if tf.num != uniq.size or tf.dim != probes.dim:
                raise ValueError(f"gallery_templates: expected shape ({uniq.size}, {probes.dim}) "
                                 f"(one row per unique_g_pids entry), got ({tf.num}, {tf.dim})")
            self.g_max = _bad_rows(tf, metric, device)
            self.set_templates(tf.rows(0, tf.num, device).to(self.dtype))
        if metric != "cosine":
            # dot's range and euclidean's scale need the largest gallery norm before any
            # score: the gallery pass runs now, in a read of the features of its own
            self.ensure_gallery()
            self.scale = self._range(probes.name, gallery.name, p_max, self.g_max)
            if self.scale != 1.0:  # euclidean only: the templates are not normalised
                self.probes = self.probes * self.scale
                self.set_templates(self.templates * self.scale)
        self.p_sq = (self.probes * self.probes).sum(1) if metric == "euclidean" else None

    def set_templates(self, templates: torch.Tensor) -> None:
        """(S, D) templates as given or averaged: prepared like gallery rows."""
        self.templates = _prepare(templates, self.metric)
        self.t_sq = (self.templates ** 2).sum(1) if self.metric == "euclidean" else None

    def _range(self, p_name: str, g_name: str, p_max: float, g_max: float) -> float:
        """The power of two the euclidean features are scaled by (1.0: none needed); a
        ValueError when dot products cannot be represented (module docstring)."""
        fi = torch.finfo(self.dtype)
        if self.metric == "dot":
            bound = p_max * g_max
            if bound > fi.max:
                raise ValueError(f"{p_name}, {g_name}: dot products up to {bound:.3g} (the "
                                 f"largest norms {p_max:.3g} x {g_max:.3g}) exceed {self.dtype}'s "
                                 f"range ({fi.max:.3g}); rescale the features or use cosine")
            if 0 < bound < fi.tiny / fi.eps:
                raise ValueError(f"{p_name}, {g_name}: every dot product is below "
                                 f"{bound:.3g} and underflows {self.dtype} (smallest normal "
                                 f"{fi.tiny:.3g}); rescale the features or use cosine")
            return 1.0
        lo, hi = _safe_norms(self.dtype)
        big = max(p_max, g_max)
        if big == 0 or lo < big < hi:
            return 1.0
        if 2.0 * big > fi.max:
            raise ValueError(f"{p_name}, {g_name}: distances up to {2 * big:.3g} exceed "
                             f"{self.dtype}'s range ({fi.max:.3g}); rescale the features")
        # an even power of two: the squares scale by an exact power of four, sqrt exactly
        return 2.0 ** (-2 * (int(np.frexp(big)[1]) // 2))

    def _gallery_tile(self, a: int, b: int, first: Optional[_GalleryPass]):
        """(prepared rows a..b of the gallery, their squared norms or None)."""
        t = self.gallery.rows(a, b, self.device).to(self.dtype)
        norms = []
        g = _prepare(t, self.metric, norms)
        if self.scale != 1.0:
            g = g * self.scale
        g_sq = (g * g).sum(1) if self.metric == "euclidean" else None
        if first is not None:
            first.tile(a, t, g, norms, g_sq)
        return g, g_sq

    def ensure_gallery(self) -> None:
        """Check the gallery (and average its templates) now, if no walk has."""
        if not self.gallery_checked:
            first = _GalleryPass(self)
            for a, b in self._tiles():
                self._gallery_tile(a, b, first)
            first.finish()

    def _tiles(self):
        G = self.gallery.num
        for a in range(0, G, GALLERY_TILE):
            yield a, min(a + GALLERY_TILE, G)

    def _chunks(self, r0: int, r1: int, chunk: int):
        """(probe rows (c, D), their squared norms or None, offset in the block): the
        matmul chunks of rows r0..r1 (r0 a multiple of ``chunk``)."""
        for c0 in range(r0, r1, chunk):
            c1 = min(c0 + chunk, r1)
            yield (self.probes[c0:c1], None if self.p_sq is None else self.p_sq[c0:c1],
                   c0 - r0)

    def score_rows(self, r0: int, r1: int, chunk: int) -> torch.Tensor:
        """(r1 - r0, G) scores of probes r0..r1 against the gallery, tile by tile (the
        first such call also checks the gallery: :class:`_GalleryPass`)."""
        first = None if self.gallery_checked else _GalleryPass(self)
        out = torch.empty(r1 - r0, self.gallery.num, dtype=self.dtype, device=self.device)
        for a, b in self._tiles():
            g, g_sq = self._gallery_tile(a, b, first)
            for p, p_sq, o in self._chunks(r0, r1, chunk):
                out[o:o + p.shape[0], a:b] = _scores(p, g, self.metric, p_sq, g_sq)
        if first is not None:
            first.finish()  # raises before any score of a bad gallery is handed over
        return out if self.scale == 1.0 else out.div_(self.scale)

    def merge_rows(self, r0: int, r1: int, chunk: int) -> torch.Tensor:
        """(r1 - r0, S) scores of probes r0..r1 against the subject templates."""
        self.ensure_gallery()
        out = torch.cat([_scores(p, self.templates, self.metric, p_sq, self.t_sq)
                         for p, p_sq, _ in self._chunks(r0, r1, chunk)])
        return out if self.scale == 1.0 else out.div_(self.scale)


class EmbeddingSource(BlockSource):
    """Row blocks of the (P, G) scores and (P, S) template scores of features, computed
    block by block (one model, or K models fused per block; see the module docstring).

    ``timing`` accumulates the seconds spent scoring (``"matmul"``: reading and converting
    the gallery tiles, the matmuls and their elementwise work) and fusing (``"fusion"``);
    ``progress(pass, rows done, P)`` is called after each block (``pass`` counts the walks
    over the probes, from 1)."""

    def __init__(self, models: Sequence[_Model], block_rows: int, fusion=None, ids=None,
                 quality=None, m: float = 2.0, face: Optional[str] = None,
                 progress: Optional[Callable[[int, int, int], None]] = None, names=None):
        self.models, self.fusion, self.ids, self.quality = list(models), fusion, ids, quality
        self.names, self.m, self.face, self.progress = names, m, face, progress
        first = self.models[0]
        self.num_rows, self.num_cols = first.probes.shape[0], first.gallery.num
        self.merge_cols = int(first.uniq.size)
        self.dtype = torch.float32 if fusion is not None else first.dtype
        self.device = torch.device(first.device)
        self.set_block_rows(block_rows)
        self.timing = {"matmul": 0.0, "fusion": 0.0}
        self.walks = 0

    def check_now(self) -> None:
        """Check the gallery features (and average the templates) before any walk, in a
        read of their own: for callers that must know of bad features up front (a shard
        group agrees on errors before its collectives); else the first walk does it."""
        for mod in self.models:
            mod.ensure_gallery()

    def set_block_rows(self, block_rows: int) -> None:
        """Probe rows per block: ``block_rows`` rounded down to a multiple of the matmul
        chunk, ``min(block_rows, MATMUL_ROWS)`` rows (see :data:`MATMUL_ROWS`)."""
        block_rows = check_block_rows(block_rows)
        self.chunk = min(block_rows, MATMUL_ROWS)
        self.block_rows = block_rows // self.chunk * self.chunk

    def _timed(self, stage: str, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timing[stage] += time.perf_counter() - t0
        return out

    def blocks(self, scores=True, merge=False):
        self.walks += 1
        walk = self.walks
        for r0 in range(0, self.num_rows, self.block_rows):
            r1 = min(r0 + self.block_rows, self.num_rows)
            blk = Block(slice(r0, r1), *self._block(r0, r1, scores, merge))
            yield from _handed_over(blk)
            del blk
            if self.progress is not None:
                self.progress(walk, r1, self.num_rows)

    def _block(self, r0: int, r1: int, scores: bool, merge: bool) -> tuple:
        if self.fusion is None:
            mod = self.models[0]
            return (self._timed("matmul", lambda: mod.score_rows(r0, r1, self.chunk))
                    if scores else None,
                    self._timed("matmul", lambda: mod.merge_rows(r0, r1, self.chunk))
                    if merge else None)
        # a fusion needs every model's rows (ScoreSet blocks always carry score rows)
        rows = [self._timed("matmul", lambda mod=mod: mod.score_rows(r0, r1, self.chunk))
                for mod in self.models]
        mrows = [self._timed("matmul", lambda mod=mod: mod.merge_rows(r0, r1, self.chunk))
                 for mod in self.models] if merge else None
        return self._timed("fusion", lambda: self._fuse(r0, r1, rows, mrows, scores))

    def _fuse(self, r0, r1, rows, mrows, scores) -> tuple:
        # the one fusion call site: a ScoreSet block of these probe rows to the Fuser
        # (a fitted FusionResult or a qme.Predictor; qme_ext.qme.predictor)
        from ..io import ScoreSet

        def np_rows(ts):
            return {n: t.float().cpu().numpy() for n, t in zip(self.names, ts)}
        q = self.quality
        qrows = {k: v[r0:r1] for k, v in q.items()} if isinstance(q, Mapping) else {}
        block = ScoreSet(models=list(self.names), score_mats=np_rows(rows),
                         merge_score_mats=np_rows(mrows) if mrows is not None else {},
                         quality=qrows, **{k: (v[r0:r1] if k.startswith("q_") else v)
                                           for k, v in self.ids.items()})
        del rows, mrows
        s, mm = self.fusion(block, None if q is None or isinstance(q, Mapping) else q[r0:r1])
        to = (lambda a: None if a is None else torch.from_numpy(a).to(self.device))
        return (to(s) if scores else None), to(mm)


def _fuser(fusion, names: list, quality, P: int, m: float, face, device) -> tuple:
    """(fuse(block, q) -> (score rows, merge rows), quality rows) of ``fusion``: a fitted
    FusionResult (with ``m``, ``face``), a :class:`qme_ext.qme.Predictor`, or a bare QME
    (wrapped in a Predictor: its imputation, offsets and scale apply here too)."""
    if hasattr(fusion, "normalisers"):  # a fitted FusionResult
        q = None if quality is None else {k: np.asarray(v) for k, v in quality.items()}
        return (lambda blk, _q: fusion.fuse_block(blk, m=m, face=face,
                                                  device=device or "cpu")), q
    # a Predictor, or a bare QME asked for its predictor (duck-typed: qme is a layer above)
    pred = fusion.as_predictor() if hasattr(fusion, "as_predictor") else fusion
    if list(names) != list(pred.models):
        raise ValueError(f"probe_feats: the QME fuses {list(pred.models)} in that order, "
                         f"got {list(names)}")
    if isinstance(quality, Mapping):  # quality features for the predictor's QE
        return (lambda blk, _q: pred.fuse_block(blk)), {k: np.asarray(v)
                                                       for k, v in quality.items()}
    if quality is None and pred.kind == "qme" and pred.model.num_experts > 1 \
            and pred.qe is None:
        quality = np.full(P, pred.const_quality, dtype=np.float32)  # predict()'s constant gate
    q = None if quality is None else np.asarray(quality, dtype=np.float32).reshape(-1)
    if q is not None and q.shape[0] != P:
        raise ValueError(f"quality: expected {P} values (one per probe), got {q.shape[0]}")
    return (lambda blk, qb: pred.fuse_block(blk, q=qb)), q


def _feature_dict(x, name: str, models: Optional[Sequence[str]]) -> dict:
    if isinstance(x, Mapping):
        names = list(models) if models is not None else list(x)
        missing = [n for n in names if n not in x]
        if missing:
            raise ValueError(f"{name}: missing model(s) {missing}")
        return {n: FeatureArray(x[n], f"{name}[{n!r}]") for n in names}
    return {None: FeatureArray(x, name)}


def _ids_numpy(x, name: str, length: int) -> Optional[np.ndarray]:
    if x is None:
        return None
    return as_ids(x, name, length, torch.device("cpu")).numpy()


def embedding_source(probe_feats, gallery_feats, *, g_pids, unique_g_pids=None,
                     gallery_templates=None, metric: str = "cosine", fusion=None,
                     models: Optional[Sequence[str]] = None, ids: Optional[dict] = None,
                     quality=None, m: float = 2.0, face: Optional[str] = None,
                     max_memory=None, block_rows: Optional[int] = None, device=None,
                     progress=None) -> tuple:
    """(:class:`EmbeddingSource`, unique_g_pids (S,) int64): the checked block source of
    :func:`evaluate_embeddings` (also what ``distributed.evaluate_embeddings`` shards)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    if block_rows is not None and max_memory is not None:
        raise ValueError("block_rows, max_memory: give at most one")
    budget = None if max_memory is None else parse_memory(max_memory)
    pf = _feature_dict(probe_feats, "probe_feats", models)
    gf = _feature_dict(gallery_feats, "gallery_feats", list(pf) if None not in pf else None)
    if (None in pf) != (None in gf) or list(pf) != list(gf):
        raise ValueError("probe_feats, gallery_feats: give both as arrays, or both as dicts "
                         f"with the same models; got {list(pf)} and {list(gf)}")
    fused = None not in pf and len(pf) > 1 or fusion is not None
    if fusion is not None and None in pf:
        raise ValueError("probe_feats, gallery_feats: fusion needs dicts {model: features}")
    if fused and fusion is None:
        raise ValueError("fusion: several models' features need a fitted FusionResult or a "
                         "QME model to fuse them")
    if fused and metric == "euclidean":
        raise ValueError("metric: fusion combines similarities; use 'cosine' or 'dot'")
    first_p, first_g = next(iter(pf.values())), next(iter(gf.values()))
    for feats, want in ((pf, first_p.num), (gf, first_g.num)):
        for f in feats.values():
            if f.num != want:
                raise ValueError(f"{f.name}: expected {want} rows like the other models, "
                                 f"got {f.num}")
    if device is None:
        device = first_p.device if first_p.device.type == "cuda" else torch.device("cpu")
    device = check_target_device(device)
    P, G = first_p.num, first_g.num
    gp = _ids_numpy(g_pids, "g_pids", G)
    if unique_g_pids is None:
        if gallery_templates is not None:
            raise ValueError("unique_g_pids: required with gallery_templates (its row order)")
        uniq = np.unique(gp)
    else:
        uniq = as_ids(unique_g_pids, "unique_g_pids", len(unique_g_pids), torch.device("cpu"))
        uniq = uniq.numpy()
        if uniq.size == 0 or (np.diff(uniq) <= 0).any():
            raise ValueError("unique_g_pids: expected distinct subject ids in ascending order "
                             "(the template columns, docs/definitions.rst, §1)")
    if gallery_templates is not None and None not in pf and not isinstance(gallery_templates,
                                                                         Mapping):
        raise ValueError("gallery_templates: expected a dict {model: (S, D)} like the features")
    mods = [_Model(pf[n], gf[n], metric, device, gp, uniq,
                   None if gallery_templates is None else
                   (gallery_templates if n is None else gallery_templates[n])) for n in pf]
    K = len(mods)
    if block_rows is None:
        item = torch.tensor([], dtype=mods[0].dtype).element_size()
        row = bytes_per_row(G, uniq.size, _max_group(gp), K if fused else 1, fused)
        row += (item - 4) * (G + uniq.size) * K + 2 * item * min(G, GALLERY_TILE)
        block_rows = min(P, rows_per_block(row, budget) if budget is not None
                         else max(1, _DEFAULT_BLOCK_BYTES // row))
    if fused:
        fuser, q = _fuser(fusion, list(pf), quality, P, m, face, device)
        if ids is None:  # a block ScoreSet needs ids; only g_pids matter to a fusion
            ids = {"q_pids": np.zeros(P, np.int64), "q_camids": np.zeros(P, np.int64),
                   "q_clothes_ids": np.zeros(P, np.int64), "g_pids": gp,
                   "g_camids": np.zeros(G, np.int64), "g_clothes_ids": np.zeros(G, np.int64),
                   "unique_g_pids": uniq}
        source = EmbeddingSource(mods, block_rows, fuser, ids, q, m, face, progress, list(pf))
    else:
        source = EmbeddingSource(mods, block_rows, progress=progress)
    return source, uniq


def embedding_matrices(probe_feats, gallery_feats, *, g_pids, unique_g_pids=None,
                       gallery_templates=None, metric: str = "cosine",
                       block_rows: Optional[int] = None, device=None, **fusion_options):
    """The whole ``(score_mat (P, G), merge_score_mat (P, S))`` that
    :func:`evaluate_embeddings` scores block by block (same tiles, same matmuls): for
    small problems, and the reference its report is bit-identical to. Tensors on the
    compute device; ``euclidean`` gives distances."""
    source, _ = embedding_source(probe_feats, gallery_feats, g_pids=g_pids,
                                 unique_g_pids=unique_g_pids,
                                 gallery_templates=gallery_templates, metric=metric,
                                 block_rows=block_rows, device=device, **fusion_options)
    S, M = [], []
    for blk in source.blocks(scores=True, merge=True):
        S.append(blk.scores)
        M.append(blk.merge)
    return torch.cat(S), torch.cat(M)


def evaluate_embeddings(probe_feats, gallery_feats, *, q_pids, q_camids, q_clothes_ids,
                        g_pids, g_camids, g_clothes_ids,
                        unique_g_pids=None, gallery_templates=None, metric: str = "cosine",
                        larger_is_better: Optional[bool] = None, protocol: str = "qme",
                        seed: int = 45, fars: Sequence[float] = DEFAULT_FARS,
                        max_memory=None, block_rows: Optional[int] = None, device=None,
                        fusion=None, models: Optional[Sequence[str]] = None, quality=None,
                        m: float = 2.0, face: Optional[str] = None,
                        ci: Optional[float] = None, n_boot: int = 1000, boot_seed: int = 0,
                        boot_unit: str = "subject", progress=None, source_out=None) -> dict:
    """The :func:`~qme_ext.metrics.evaluate` report of probe and gallery features, scored
    tile by tile (module docstring): every key of ``evaluate``, the same options.

    Parameters
    ----------
    probe_feats : (P, D) features, or ``{model: (P, D_k)}`` (with ``fusion``).
    gallery_feats : (G, D) features, or ``{model: (G, D_k)}``.
    q_pids, q_camids, q_clothes_ids : (P,) ids; g_pids, g_camids, g_clothes_ids : (G,)
        ids: the id arguments of ``evaluate``, required like there (the report has the
        GR, SC and CC rows; a face set without cameras or clothes can pass distinct
        camera ids and one clothes id).
    unique_g_pids : (S,) ascending subject ids of the templates (default: distinct g_pids).
    gallery_templates : (S, D) given templates instead of the per-subject means.
    metric : "cosine", "dot" or "euclidean" (a distance).
    larger_is_better : None: the metric's own orientation (False for euclidean); False
        reads the metric's values as distances, True as similarities.
    max_memory : bound on the block of scores held at once (e.g. "2GB"; what it covers:
        :mod:`qme_ext.metrics.streaming`, plus one gallery tile per probe); else
        ``block_rows`` probes per block, else blocks of about 256 MiB.
    device : where the matmuls and passes run (default: the probe features' device).
    fusion, models, quality, m, face : several models' features fused per block (module
        docstring); ``quality`` is the ScoreSet quality dict of a FusionResult
        (``{name: (P, ...)}``) or the (P,) probe quality of a QME.
    ci, n_boot, boot_seed, boot_unit : bootstrap intervals, as ``evaluate``.
    progress : ``progress(pass, rows done, P)`` after each block.
    source_out : a list; the :class:`EmbeddingSource` is appended (its ``timing``).

    Returns the report dict (a ``BootReport`` with ``ci``).
    """
    from . import bootstrap, core
    from .checks import check_evaluation
    core._check_protocol(protocol)
    boot = bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    # the ids as evaluate checks them (one shared check), before any feature is read
    check_evaluation(q_pids, g_pids, unique_g_pids, seed)
    if larger_is_better is None:
        larger_is_better = metric != "euclidean"
    ids = dict(q_pids=q_pids, q_camids=q_camids, q_clothes_ids=q_clothes_ids, g_pids=g_pids,
               g_camids=g_camids, g_clothes_ids=g_clothes_ids)
    source, uniq = embedding_source(
        probe_feats, gallery_feats, g_pids=g_pids, unique_g_pids=unique_g_pids,
        gallery_templates=gallery_templates, metric=metric, fusion=fusion, models=models,
        ids=_fusion_ids(ids, unique_g_pids) if fusion is not None else None, quality=quality,
        m=m, face=face, max_memory=max_memory, block_rows=block_rows, device=device,
        progress=progress)
    if source_out is not None:
        source_out.append(source)
    return core._evaluate_source(source, q_pids, q_camids, q_clothes_ids, g_pids, g_camids,
                                 g_clothes_ids, uniq, seed=seed, fars=fars, boot=boot,
                                 larger_is_better=larger_is_better)


def _fusion_ids(ids: dict, unique_g_pids) -> dict:
    """The id vectors a fused ScoreSet block carries (numpy int64; absent ones zeros)."""
    P = len(ids["q_pids"])
    G = len(ids["g_pids"])
    out = {}
    for k, v in ids.items():
        n = P if k.startswith("q_") else G
        out[k] = np.zeros(n, np.int64) if v is None else _ids_numpy(v, k, n)
    out["unique_g_pids"] = (np.unique(out["g_pids"]) if unique_g_pids is None
                            else _ids_numpy(unique_g_pids, "unique_g_pids", len(unique_g_pids)))
    return out
