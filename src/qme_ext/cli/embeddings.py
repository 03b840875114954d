"""``qme-ext evaluate-embeddings``: the evaluate report of probe and gallery features,
scored tile by tile (:func:`qme_ext.metrics.evaluate_embeddings`), with the evaluate
command's table, JSON and plots.

Input file layout (one of)
--------------------------
* HDF5 (``.h5``/``.hdf5``): datasets ``probe_feats`` (P, D) and ``gallery_feats`` (G, D),
  read slice by slice; root id vectors as in a SPEC §1 score file: ``q_pids`` (P,),
  ``g_pids`` (G,), optional ``q_camids, q_clothes_ids`` (P,), ``g_camids, g_clothes_ids``
  (G,), ``unique_g_pids`` (S,) and ``gallery_templates`` (S, D).
* ``.npz``: the same keys (members are loaded whole when read).
* a directory of ``<key>.npy`` files with the same names, memory-mapped (``np.load(...,
  mmap_mode="r")``): the features are read block by block from disk.

Features float16/float32/float64, ids integers (or floats holding integers). Without
camera ids every probe and gallery entry count as different cameras (every same-pid
entry is good); without clothes ids everyone wears the same clothes (CC has no valid
probe and reports zeros).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .files import CommandFiles
from .common import PROG, UserError, progress

FEATURE_KEYS = ("probe_feats", "gallery_feats")
ID_KEYS = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids")
OPTIONAL_KEYS = ("unique_g_pids", "gallery_templates")
# a progress bar once a run has taken this long (seconds): short runs stay quiet
BAR_AFTER_S = 2.0


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FEATURES", help="features and ids: .h5/.hdf5, .npz, or a "
                   "directory of .npy files (layout: python -m pydoc qme_ext.cli.embeddings)")
    p.add_argument("--metric", default="cosine", choices=("cosine", "dot", "euclidean"),
                   help="score of a probe/gallery pair (default cosine; euclidean is a "
                   "distance, its thresholds are distances: accept d <= t)")
    p.add_argument("--name", help="row name in the table and JSON (default: the file name)")
    p.add_argument("--max-memory", metavar="SIZE", help="bound on the block of scores held at "
                   "once, e.g. 2GB or 512MiB (default: blocks of about 256 MiB)")
    p.add_argument("--protocol", default="qme", help="metric protocol (default: qme)")
    p.add_argument("--seed", type=int, default=45, help="open-set split seed (default: 45)")
    p.add_argument("--device", default="cpu", help="torch device of the matmuls and passes")
    p.add_argument("--json", metavar="OUT", help="write every metric as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, det.png, cmc.png and "
                   "score_hist_<row>.png into DIR (two more passes; euclidean: of -d)")
    from .evaluate import add_bootstrap_arguments
    add_bootstrap_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.set_defaults(compare=None)  # the evaluate command's --compare: one row here


class _Inputs:
    """The arrays of a features file, opened lazily (HDF5 datasets stay on disk)."""

    def __init__(self, path: str):
        import numpy as np
        self.path, self._h5 = path, None
        if os.path.isdir(path):
            self.items = {os.path.splitext(f)[0]: os.path.join(path, f)
                          for f in os.listdir(path) if f.endswith(".npy")}
            self.get = lambda k: np.load(self.items[k], mmap_mode="r")
        elif path.endswith(".npz"):
            self._npz = np.load(path)
            self.items = set(self._npz.files)
            self.get = lambda k: self._npz[k]
        elif path.endswith((".h5", ".hdf5")):
            import h5py
            self._h5 = h5py.File(path, "r")
            self.items = set(self._h5.keys())
            self.get = lambda k: self._h5[k] if k in FEATURE_KEYS + ("gallery_templates",) \
                else self._h5[k][()]
        elif not os.path.exists(path):
            raise UserError(f"{path}: no such file or directory")
        else:
            raise UserError(f"{path}: expected a .h5/.hdf5 or .npz file, or a directory of "
                            ".npy files")
        for key in FEATURE_KEYS + ("q_pids", "g_pids"):
            if key not in self.items:
                raise UserError(f"{path}: missing {key!r} (layout: see qme_ext.cli.embeddings)")

    def arrays(self) -> dict:
        import numpy as np
        out = {k: self.get(k) for k in FEATURE_KEYS + ("gallery_templates",)
               if k in self.items}
        # id vectors are small: loaded whole (and writable, unlike a memory map)
        out.update({k: np.array(self.get(k)) for k in ID_KEYS + ("unique_g_pids",)
                    if k in self.items})
        P, G = len(out["q_pids"]), len(out["g_pids"])
        if "q_camids" not in out or "g_camids" not in out:
            out["q_camids"], out["g_camids"] = np.zeros(P, np.int64), np.ones(G, np.int64)
        if "q_clothes_ids" not in out or "g_clothes_ids" not in out:
            out["q_clothes_ids"], out["g_clothes_ids"] = np.zeros(P, np.int64), np.zeros(G,
                                                                                        np.int64)
        return out

    def close(self):
        if self._h5 is not None:
            self._h5.close()


class _Bar:
    """A one-line progress bar on stderr, shown once a run has taken BAR_AFTER_S seconds."""

    def __init__(self, args):
        self.quiet, self.t0, self.shown = getattr(args, "quiet", False), time.monotonic(), False

    def __call__(self, walk: int, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.t0
        if self.quiet or elapsed < BAR_AFTER_S:
            return
        filled = int(30 * done / max(total, 1))
        print(f"\r{PROG}: pass {walk} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
              f"probes, {elapsed:.0f} s", end="", file=sys.stderr, flush=True)
        self.shown = True

    def end(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)
            self.shown = False


def run(args) -> int:
    from .evaluate import _plots_available, _print_results, common_options
    boot = common_options(args)
    inputs = _Inputs(args.file)
    row = args.name or os.path.splitext(os.path.basename(os.path.normpath(args.file)))[0]
    try:
        results, curves = _evaluate(args, inputs, row, boot,
                                    bool(args.plots) and _plots_available())
    finally:
        inputs.close()
    _print_results(args, results)
    if curves:
        from .. import plots
        plots.write_curve_plots(args.plots, curves)
        progress(args, f"plots written to {args.plots}")
    return 0


def _evaluate(args, inputs: _Inputs, row: str, boot: dict, plotting: bool) -> tuple:
    from ..metrics.core import _curves_source
    from ..metrics.embeddings import evaluate_embeddings
    from ..metrics.orientation import NegatedSource
    a = inputs.arrays()
    bar, sources = _Bar(args), []
    try:
        res = evaluate_embeddings(
            a["probe_feats"], a["gallery_feats"], **{k: a[k] for k in ID_KEYS},
            unique_g_pids=a.get("unique_g_pids"), gallery_templates=a.get("gallery_templates"),
            metric=args.metric, protocol=args.protocol, seed=args.seed,
            max_memory=args.max_memory, device=args.device, progress=bar, source_out=sources,
            **boot)
        curves = {}
        if plotting:
            source = sources[0]
            if args.metric == "euclidean":
                source = NegatedSource(source)
            curves[row] = _curves_source(source, a["q_pids"], a["q_camids"], a["g_pids"],
                                         a["g_camids"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"{args.file}: {exc}") from None
    finally:
        bar.end()
    t = sources[0].timing
    progress(args, f"evaluated {row}: {a['probe_feats'].shape[0]} probes x "
                   f"{a['gallery_feats'].shape[0]} gallery, {args.metric}, "
                   f"{sources[0].block_rows} probes per block; scoring (matmuls) took "
                   f"{t['matmul']:.1f} s")
    return {row: res}, curves


FILES = {"evaluate-embeddings": CommandFiles(inputs=("file",), folders=("file",),
                                            outputs=(("json", "file"), ("plots", "plots")))}

COMMANDS = {
    "evaluate-embeddings": ("evaluate probe/gallery features without a score matrix "
                            "(cosine, dot or euclidean; bounded memory)", _add, run),
}
