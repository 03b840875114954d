"""``qme-ext evaluate-embeddings``: the evaluate report of probe and gallery features,
scored tile by tile (:func:`qme_ext.metrics.evaluate_embeddings`), with the evaluate
command's table, JSON and plots.

Input file layout and its checks: :mod:`qme_ext.io.features` (the one reader of the
command and the API).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .files import CommandFiles
from .common import PROG, UserError, progress

# a progress bar once a run has taken this long (seconds): short runs stay quiet
BAR_AFTER_S = 2.0


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FEATURES", help="features and ids: .h5/.hdf5, .npz, or a "
                   "directory of .npy files (layout: python -m pydoc qme_ext.io.features)")
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
    from ..io.features import open_features
    row = args.name or os.path.splitext(os.path.basename(os.path.normpath(args.file)))[0]
    with open_features(args.file) as inputs:
        results, curves = _evaluate(args, inputs, row, boot,
                                    bool(args.plots) and _plots_available())
    _print_results(args, results)
    if curves:
        from .. import plots
        plots.write_curve_plots(args.plots, curves)
        progress(args, f"plots written to {args.plots}")
    return 0


def _evaluate(args, inputs, row: str, boot: dict, plotting: bool) -> tuple:
    from ..io.features import ID_KEYS
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
