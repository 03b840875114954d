"""Out-of-core evaluation of HDF5 score files (docs/definitions.rst, §1) (docs/definitions.rst, §6: "matrices too large for
memory are streamed in row blocks").

:func:`evaluate_file` (also ``qme_ext.metrics.evaluate_file`` and ``qme-ext evaluate
--max-memory``) reads one model's matrices, or the K matrices a fusion method combines,
a block of probe rows at a time and runs the evaluation engine's passes over the blocks
(:mod:`qme_ext.metrics.accumulate`). The report is bit-identical to ``metrics.evaluate`` on the
whole matrices, whatever the block size.

Passes over the file: one for ranking, open-set and the top digit of the impostor keys,
and one more for the low digit of TAR@FAR's radix select (the file stores float32
scores: 32-bit keys). A fusion item recomputes its fused block in each pass.

What the memory budget covers
-----------------------------
``max_memory`` bounds the bytes of the matrices held while one block is processed:

* a model: the block's ``score_mat`` and ``merge_score_mat`` rows (float32,
  ``4 (G + S)`` bytes per probe) and the block's candidate lists
  (:data:`CANDIDATE_BYTES` per gallery entry sharing the probe's pid, counted with the
  largest pid group of the gallery);
* a fusion item: the K models' rows (``4 K (G + S)``), the fused float32 rows
  (``4 (G + S)``; ``qme_ext::fuse_scores`` writes them directly, with no normalised
  copy), :data:`FUSION_WORK_BYTES` per fused entry for a dtype promotion, plus the
  candidate lists.

Not covered, because they grow with P + G (one number per probe or gallery entry),
not with P x G: the id vectors, the per-probe results (about 100 bytes per probe),
the genuine scores (8 bytes per same-pid pair), the kernels' fixed scratch (one
65,536-bin histogram per thread) and the calibration set of a fusion method (loaded
whole, as :func:`qme_ext.fusion.fit_fusion` needs it). A budget smaller than one
probe row is an error. A block's matrices are freed before the next block is read.
Measured (``benchmarks/bench_streaming.py``, 2,000 x 50,000 float32, a 384 MiB file):
``max_memory="64MB"`` (61 MiB) raised the peak RSS by 89 MiB, ``"256MB"`` by 267 MiB,
``load_scores`` + ``evaluate`` by 435 MiB. A z-score (or Asym-AO) fusion of 3 models of
1,000 x 20,000 float32 (a 232 MiB file): ``"32MB"`` raised it by 43 (45) MiB, ``"64MB"`` by
74 (69) MiB.

Fusion methods are fitted once on ``calibration`` and applied block by block
(:func:`qme_ext.fusion.apply_fusion`, element-wise per probe: every method of
:mod:`qme_ext.fusion` qualifies). Fitting on the evaluated file itself
(``calibration="self"``) needs statistics of the whole matrices and is refused here:
a streaming estimate would not reproduce the in-memory statistics bit for bit.
"""
from __future__ import annotations

import os
import math
import re
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .accumulate import Block, BlockSource, check_block_rows
from ..io import ScoreSet, iter_row_blocks, load_calibration, load_ids

__all__ = ["parse_memory", "bytes_per_row", "rows_per_block", "plan_block_rows", "FileSource",
           "FusedFileSource", "fuse_rows", "evaluate_file", "curves_file", "check_file_ids",
           "CANDIDATE_BYTES",
           "FUSION_WORK_BYTES"]

# index (8) + probe (8) + flags (1) + the genuine score (8) + torch temporaries of
# the candidate construction (about as much again), per same-pid gallery entry
CANDIDATE_BYTES = 48
# per fused entry beyond the fused float32 row: qme_ext::fuse_scores reads the K rows in
# place and keeps no normalised copy; models stored in different float dtypes are
# promoted to a common one first, a copy this allowance covers for one model
FUSION_WORK_BYTES = 4

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}


def parse_memory(value: Union[str, int, float]) -> int:
    """Bytes from ``value``: an integer, or a number with a unit, case-insensitive.

    ``KB, MB, GB, TB`` are powers of 1000, ``KiB, MiB, GiB, TiB`` and the bare
    ``K, M, G, T`` powers of 1024 (like ``sort -S``); ``B`` or nothing is bytes.
    Examples: ``"2GB"`` = 2e9, ``"512MiB"``, ``"1.5G"``, ``10**9``.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, float) and value == value and value not in (float("inf"), -float("inf")):
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"max_memory: expected a size such as 2GB, 512MiB or 1000000 "
                             f"(bytes), got {value!r}")
        size = float(m.group(1)) * _UNITS[unit]
        if not math.isfinite(size):  # "1e400": no size, not an OverflowError
            raise ValueError(f"max_memory: {value!r} is not a finite size")
        n = int(size)
    else:
        raise ValueError(f"max_memory: expected a size such as 2GB or a number of bytes, "
                         f"got {value!r}")
    if n <= 0:
        raise ValueError(f"max_memory: expected a positive size, got {value!r}")
    return n


def bytes_per_row(num_cols: int, merge_cols: int, max_group: int, num_models: int = 1,
                  fused: bool = False) -> int:
    """Bytes one probe row costs under the budget (see the module docstring)."""
    entries = num_cols + merge_cols
    n = 4 * entries * num_models + CANDIDATE_BYTES * max_group
    if fused:
        n += (FUSION_WORK_BYTES + 4) * entries
    return n


def rows_per_block(row_bytes: int, max_memory) -> int:
    """Probe rows per block under ``max_memory``; ValueError when not even one fits."""
    budget = parse_memory(max_memory)
    if budget < row_bytes:
        raise ValueError(f"max_memory: {budget} bytes is less than one probe row needs "
                         f"({row_bytes} bytes); raise it to at least {row_bytes}")
    return budget // row_bytes


class FileSource(BlockSource):
    """Row blocks of one model's ``score_mat`` and ``merge_score_mat`` in a score file."""

    def __init__(self, path, model: str, shapes: dict, block_rows: int, device="cpu"):
        self.path, self.model = os.fspath(path), model
        self.num_rows, self.num_cols = shapes[f"{model}/score_mat"]
        self.merge_cols = shapes[f"{model}/merge_score_mat"][1]
        self.block_rows = check_block_rows(block_rows)
        self.dtype, self.device = torch.float32, torch.device(device)
        # NaN/+inf/-inf entries of each matrix, from the last complete pass over it
        self.nonfinite: dict = {}

    def blocks(self, scores=True, merge=False):
        keys = (["score_mat"] if scores else []) + (["merge_score_mat"] if merge else [])
        readers = [iter_row_blocks(self.path, self.model, self.block_rows, k) for k in keys]
        seen = {k: dict.fromkeys(("nan", "posinf", "neginf"), 0) for k in keys}
        for parts in _in_step(readers):
            got = {k: torch.from_numpy(arr).to(self.device) for k, (_, arr) in zip(keys, parts)}
            _add_nonfinite(seen, got)
            blk = Block(parts[0][0], got.get("score_mat"), got.get("merge_score_mat"))
            del parts, got
            yield from _handed_over(blk)
        self.nonfinite.update(seen)


def _add_nonfinite(seen: dict, got: dict) -> None:
    """Add the NaN/inf counts of a block's matrices (one isfinite reduction of each, already
    in memory) to ``seen``; a function, so that no loop variable keeps a block alive."""
    from .nonfinite import count_nonfinite
    for key, t in got.items():
        for name, n in count_nonfinite(t).items():
            seen[key][name] += n


def _in_step(readers):
    """Lists of the readers' next items until they end: ``zip`` without its reuse of the
    result tuple, which would keep the previous block alive while the next one is read."""
    while readers:
        parts = [next(r, None) for r in readers]
        if parts[0] is None:
            return
        yield parts
        del parts


def _handed_over(blk: Block):
    """Yield `blk`, then drop its matrices: the consumer is done with them, and the next
    block is read only after this one is freed (one block in memory, not two)."""
    yield blk
    blk.scores = blk.merge = None


class FusedFileSource(BlockSource):
    """Row blocks of a fusion of the file's models: each block's K model rows are
    read and fused with the fitted :class:`qme_ext.fusion.FusionResult`."""

    def __init__(self, path, models: Sequence[str], ids: dict, shapes: dict, result,
                 block_rows: int, device="cpu", m: float = 2.0, face: Optional[str] = None):
        self.path, self.models, self.ids, self.result = os.fspath(path), list(models), ids, result
        self.num_rows, self.num_cols = shapes[f"{self.models[0]}/score_mat"]
        self.merge_cols = shapes[f"{self.models[0]}/merge_score_mat"][1]
        self.block_rows = check_block_rows(block_rows)
        self.dtype, self.device = torch.float32, torch.device(device)
        self.m, self.face = m, face
        # per-probe quality weights (P, 1) are what farsight_style reads
        self.quality_keys = [k.split("/", 1)[1] for k in shapes
                             if k.startswith("quality/") and k.endswith("_weights")]

    def blocks(self, scores=True, merge=False):
        readers = [(m, "score_mat") for m in self.models]
        if merge:
            readers += [(m, "merge_score_mat") for m in self.models]
        readers += [("quality", k) for k in self.quality_keys]
        its = [iter_row_blocks(self.path, grp, self.block_rows, key) for grp, key in readers]
        for parts in _in_step(its):
            sl = parts[0][0]
            got = {rk: arr for rk, (_, arr) in zip(readers, parts)}
            del parts
            fused = fuse_rows(self.result, self.models, self.ids, sl,
                              {m: got.pop((m, "score_mat")) for m in self.models},
                              {m: got.pop((m, "merge_score_mat")) for m in self.models}
                              if merge else None,
                              {k: got.pop(("quality", k)) for k in self.quality_keys},
                              self.device, self.m, self.face, scores)
            blk = Block(sl, *fused)
            del fused
            yield from _handed_over(blk)


def fuse_rows(result, models: Sequence[str], ids: dict, rows: slice, score_rows: dict,
              merge_rows: Optional[dict], quality_rows: dict, device, m: float,
              face: Optional[str], scores: bool = True) -> tuple:
    """(fused (b, G) tensor or None, fused (b, S) tensor or None) of one block of probe
    ``rows``: the K models' float32 rows (``{model: (b, G)}`` numpy, and the merge rows
    when wanted) fused by the fitted ``result`` (:func:`qme_ext.fusion.apply_fusion`);
    ``ids`` are the whole id vectors (the probes' are sliced to ``rows``)."""
    from ..fusion import apply_fusion
    block = ScoreSet(models=list(models), score_mats=score_rows,
                     merge_score_mats=merge_rows if merge_rows is not None else {},
                     quality=quality_rows,
                     **{k: (v[rows] if k.startswith("q_") else v) for k, v in ids.items()})
    del score_rows, merge_rows  # the models' rows: only their fusion goes on
    fused = apply_fusion(result, block, "_fused", device=device, m=m, face=face)
    del block
    to = (lambda a: torch.from_numpy(a).to(device))
    return (to(fused.score_mats["_fused"]) if scores else None,
            to(fused.merge_score_mats["_fused"]) if "_fused" in fused.merge_score_mats
            else None)


def _max_group(g_pids: np.ndarray) -> int:
    return int(np.unique(g_pids, return_counts=True)[1].max())


def plan_block_rows(names: Sequence[str], ids: dict, shapes: dict, fused: bool, max_memory,
                    path="") -> int:
    """Probe rows per block for ``names`` (as :func:`qme_ext.io.load_ids` returns them): as
    many as ``max_memory`` allows (all rows when None). ValueError when a model lacks its
    merge matrix or the budget does not hold one probe row."""
    for name in names:
        if f"{name}/merge_score_mat" not in shapes:
            raise ValueError(f"{os.fspath(path)}: model {name!r} has no merge_score_mat "
                             f"(needed by the open-set metrics)")
    P, G = shapes[f"{names[0]}/score_mat"]
    S = shapes[f"{names[0]}/merge_score_mat"][1]
    if max_memory is None:
        return P
    row = bytes_per_row(G, S, _max_group(ids["g_pids"]), len(names) if fused else 1, fused)
    return min(P, rows_per_block(row, max_memory))


def check_file_ids(names: Sequence[str], ids: dict, shapes: dict, seed: int = 0) -> None:
    """:func:`qme_ext.metrics.checks.check_evaluation` of a score file's ids (as
    :func:`qme_ext.io.load_ids` returns them) and ``seed``, before any matrix is read."""
    from .checks import check_evaluation
    merge = shapes.get(f"{names[0]}/merge_score_mat")
    check_evaluation(ids["q_pids"], ids["g_pids"], ids["unique_g_pids"], seed,
                     tuple(shapes[f"{names[0]}/score_mat"]),
                     merge[1] if merge is not None else None)


def _file_source(path, model, fusion, models, calibration, max_memory, block_rows, device,
                 weights, m, fusion_seed, face, seed=0):
    """(block source of ``model`` or of ``fusion`` of ``models`` in ``path``, its ids), after
    :func:`qme_ext.metrics.checks.check_evaluation` of the file's ids and ``seed``."""
    from ..fusion import calibrated_models, fit_fusion
    if (model is None) == (fusion is None):
        raise ValueError("model, fusion: give exactly one (a model name, or a fusion method)")
    if block_rows is not None and max_memory is not None:
        raise ValueError("block_rows, max_memory: give at most one")
    if max_memory is not None:
        max_memory = parse_memory(max_memory)  # a bad value is reported before the file is read
    from ..ops.inputs import check_target_device
    device = check_target_device(device) or torch.device("cpu")  # 'meta', CUDA on a CPU build
    names, ids, shapes = load_ids(path, models if fusion else [model])
    check_file_ids(names, ids, shapes, seed)
    if block_rows is None:
        block_rows = plan_block_rows(names, ids, shapes, fusion is not None, max_memory, path)
    if fusion is None:
        return FileSource(path, model, shapes, block_rows, device), ids
    if calibration is None or (isinstance(calibration, str) and calibration == "self"):
        raise ValueError("calibration: out-of-core fusion needs a calibration set (a "
                         "ScoreSet or score file); fitting on the evaluated file itself "
                         "needs its whole matrices")
    if not isinstance(calibration, ScoreSet):
        calibration = load_calibration(calibration, names)
    names = calibrated_models(names, calibration)
    result = fit_fusion(fusion, calibration, names, device=device, weights=weights,
                        seed=fusion_seed)
    return FusedFileSource(path, names, ids, shapes, result, block_rows, device, m, face), ids


def evaluate_file(path, model: Optional[str] = None, *, fusion: Optional[str] = None,
                  models: Optional[Sequence[str]] = None, calibration=None, max_memory=None,
                  block_rows: Optional[int] = None, protocol: str = "qme", seed: int = 45,
                  device="cpu", fars=None, weights=None, m: float = 2.0, fusion_seed: int = 0,
                  face: Optional[str] = None, ci: Optional[float] = None, n_boot: int = 1000,
                  boot_seed: int = 0, boot_unit: str = "subject",
                  larger_is_better: bool = True) -> dict:
    """The :func:`qme_ext.metrics.evaluate` report of ``model`` (or of ``fusion`` of
    ``models``, default all) in the score file ``path``, read in row blocks.

    Block size: ``block_rows`` probes, else as many as ``max_memory`` allows (see the
    module docstring for what it covers), else the whole file in one block.
    ``calibration`` (a :class:`~qme_ext.io.ScoreSet` or a file path) is required with
    ``fusion``; ``weights``, ``m``, ``fusion_seed`` and ``face`` are those of
    :func:`qme_ext.fusion.fuse`. ``device`` runs fusion and the metric kernels.
    ``ci``, ``n_boot``, ``boot_seed``, ``boot_unit``: bootstrap intervals as in
    :func:`qme_ext.metrics.evaluate`, bit-identical to it for any block size (the
    TAR replicates read the file once more, for the impostors above the select rank).
    ``larger_is_better=False``: the file holds distances (as :func:`~qme_ext.metrics.evaluate`).
    """
    from . import bootstrap, core as metrics
    metrics._check_protocol(protocol)
    boot = bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    source, ids = _file_source(path, model, fusion, models, calibration, max_memory, block_rows,
                               device, weights, m, fusion_seed, face, seed)
    out = metrics._evaluate_source(
        source, ids["q_pids"], ids["q_camids"], ids["q_clothes_ids"], ids["g_pids"],
        ids["g_camids"], ids["g_clothes_ids"], ids["unique_g_pids"], seed=seed,
        fars=metrics.DEFAULT_FARS if fars is None else fars, boot=boot,
        larger_is_better=larger_is_better)
    if isinstance(source, FileSource):  # as metrics.evaluate: ValueError or a warning
        from .nonfinite import require_finite_counts, warn_matrix_counts
        require_finite_counts(source.nonfinite, {
            "score_mat": (source.num_rows, source.num_cols),
            "merge_score_mat": (source.num_rows, source.merge_cols)})
        warn_matrix_counts(source.nonfinite)
    return out


def curves_file(path, model: Optional[str] = None, *, fusion: Optional[str] = None,
                models: Optional[Sequence[str]] = None, calibration=None, max_memory=None,
                block_rows: Optional[int] = None, device="cpu", weights=None, m: float = 2.0,
                fusion_seed: int = 0, face: Optional[str] = None, points: int = 64,
                bins: int = 60, ci: Optional[float] = None, n_boot: int = 1000,
                boot_seed: int = 0, boot_unit: str = "subject") -> dict:
    """The plot curves of ``model`` (or ``fusion``) in ``path`` read in row blocks, as
    :func:`qme_ext.plots.curves_of_matrix` gives them for a loaded matrix, except that
    ROC and DET are sampled at ``points`` log-spaced FARs (every sampled point lies
    exactly on the full curve). Arguments as :func:`evaluate_file`; ``ci=...`` adds the
    bands of :func:`qme_ext.metrics.curve_bands` (``roc_band``, ``cmc_ci``)."""
    from . import bootstrap, core as metrics
    boot = bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    source, ids = _file_source(path, model, fusion, models, calibration, max_memory, block_rows,
                               device, weights, m, fusion_seed, face)
    return metrics._curves_source(source, ids["q_pids"], ids["q_camids"], ids["g_pids"],
                                  ids["g_camids"], points, bins, boot)
