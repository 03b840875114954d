"""``qme-ext verify``: verification metrics of genuine/impostor score files.

``qme-ext verify gen.txt imp.txt`` (pyeer lists, one score per line; several systems as
consecutive genuine/impostor pairs), ``qme-ext verify scores-dev scores-eval`` (bob 4/5-column
files, one system each), CSV or ``.npz``/``.npy`` pair files (:func:`qme_ext.io.load_pairs`).
Prints one table row per system, ``--json`` writes every key of
:meth:`qme_ext.verification.VerificationResult.as_dict`, ``--plots DIR`` writes roc.png,
det.png and score_hist_<system>.png. Each input is read once, so pipes work
(``qme-ext verify <(zcat gen.gz) <(zcat imp.gz)``); an output that is an input is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .common import (PROG, UserError, check_device, format_table, json_value, plot_outputs,
                     progress, refuse_overwriting_inputs)

VERIFY_HELP = "verification metrics (EER, FNMR@FMR, ...) of genuine/impostor score files"


def _rates(text: str, option: str) -> list:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated rates, got {text!r}") from None
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise UserError(f"{option}: rates must lie in (0, 1], got {text!r}")
    return values


def _add_verify_args(p: argparse.ArgumentParser) -> None:
    p.description = VERIFY_HELP + ". " + (
        "FILES: bob 4-column (claimed_id real_id probe_label score) or 5-column files, CSV "
        "with a 'score' column and a 'label' (or claimed_id/real_id) column, .npz "
        "(genuine/impostor or scores/labels) or .npy pair files, one system each; or pyeer "
        "one-score-per-line lists given as GENUINE IMPOSTOR pairs. Higher score = more alike. "
        "Example: qme-ext verify gen.txt imp.txt --json out.json --plots plots/")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="score files (pair files, or genuine/impostor list pairs)")
    p.add_argument("--names", help="comma-separated system names (default: file names)")
    p.add_argument("--impostor-format", choices=("scores", "histogram"), default="scores",
                   help="impostor lists: one score per line, or pyeer's integer histogram "
                   "(line i = count of impostor scores equal to i)")
    p.add_argument("--fmrs", default="0.0001,0.001,0.01",
                   help="FMRs at which FNMR is reported (default 0.0001,0.001,0.01)")
    p.add_argument("--fnmrs", default="0.001,0.01,0.1",
                   help="FNMRs at which FMR is reported (default 0.001,0.01,0.1)")
    p.add_argument("--convention", choices=("bob", "pyeer", "sklearn"), default="bob",
                   help="EER convention of the table's EER column (default bob; the JSON holds "
                   "all three): bob.measure midpoint thresholds, pyeer/FVC2000 closest "
                   "crossing, or the scikit-learn ROC crossing FNR = FPR")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--json", metavar="OUT", help="write every metric of every system as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, det.png and "
                   "score_hist_<system>.png into DIR")
    p.add_argument("--distance", action="store_true", help="the scores are distances (lower "
                   "= more alike); thresholds are distances, accepting d <= t")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _systems(args) -> list:
    """[Pairs] of the command line's files, after every check. Each file is read once (a
    pipe such as ``<(cat gen.txt)`` cannot be read twice)."""
    from ..io import load_pairs
    from ..io.pair_files import read_pair_source, score_list_format
    for f in args.files:
        if not os.path.exists(f):
            raise UserError(f"{f}: no such file")
    files, systems, i = [read_pair_source(f) for f in args.files], [], 0
    while i < len(files):
        if score_list_format(files[i]):
            if i + 1 >= len(files):
                raise UserError(f"{files[i].path} holds one score per line (one side): give "
                                "it with its impostor file, GENUINE IMPOSTOR")
            systems.append(load_pairs(files[i], impostor=files[i + 1],
                                      impostor_format=args.impostor_format))
            i += 2
        else:
            systems.append(load_pairs(files[i]))
            i += 1
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
        if len(names) != len(systems):
            raise UserError(f"--names: {len(names)} names for {len(systems)} systems")
        for s, n in zip(systems, names):
            s.name = n
    seen = [s.name for s in systems]
    if len(set(seen)) != len(seen):
        raise UserError(f"systems share a name ({seen}); pass --names")
    return systems


def _columns(fmrs, fnmrs, convention) -> tuple:
    from ..metrics.core import _pct_key
    cols = [(f"EER({convention})", "EER", None)]
    cols += [(_pct_key("FNMR", f, "FMR"), _pct_key("FNMR", f, "FMR"), None) for f in fmrs]
    cols += [(_pct_key("FMR", f, "FNMR"), _pct_key("FMR", f, "FNMR"), None) for f in fnmrs]
    return tuple(cols + [("ZeroFMR", "ZeroFMR", None), ("ZeroFNMR", "ZeroFNMR", None),
                         ("AUC", "AUC", None)])


def run_verify(args) -> int:
    fmrs, fnmrs = _rates(args.fmrs, "--fmrs"), _rates(args.fnmrs, "--fnmrs")
    check_device(args.device)
    systems = _systems(args)
    refuse_overwriting_inputs(args.files, [("--json", args.json)] + plot_outputs(
        args.plots, ["roc.png", "det.png"] + [_hist_name(s.name) for s in systems]))
    from ..metrics.nonfinite import describe_nonfinite
    from ..metrics.verification import verification
    results, reports = {}, {}
    for s in systems:
        progress(args, f"{s.name}: {s.genuine.size} genuine, {s.impostor.size} impostor scores "
                       f"({s.format})")
        try:
            res = verification(s.genuine, s.impostor, fmrs, fnmrs, args.convention,
                               device=args.device, warn=False,
                               larger_is_better=not args.distance)
        except ValueError as exc:
            raise UserError(f"{s.name}: {exc}") from None
        text = describe_nonfinite(res.num_nonfinite)
        if text:
            print(f"{PROG}: warning: {s.name}: {text}", file=sys.stderr)
        results[s.name] = res
        reports[s.name] = dict(res.as_dict(), num_nonfinite=res.num_nonfinite)
    print(format_table(reports, _columns(fmrs, fnmrs, args.convention)))
    if args.json:
        from ..io import write_atomic
        write_atomic(args.json, json.dumps({r: json_value(rep) for r, rep in reports.items()},
                                           indent=2))
        progress(args, f"metrics written to {args.json}")
    if args.plots:
        _plots(args, systems, results)
    return 0


def _hist_name(system: str) -> str:
    from ..plots import safe_name
    return f"score_hist_{safe_name(system)}.png"


def _plots(args, systems, results) -> None:
    from .. import plots
    if not plots.available():
        print(f"{PROG}: warning: matplotlib is not installed; skipping --plots", file=sys.stderr)
        return
    os.makedirs(args.plots, exist_ok=True)
    plots.plot_roc({n: r.roc[:2] for n, r in results.items()}, os.path.join(args.plots, "roc.png"))
    plots.plot_det({n: r.det for n, r in results.items()}, os.path.join(args.plots, "det.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for s in systems:
            plots.plot_score_hist(s.genuine, s.impostor, f"{s.name}: score distributions",
                                  os.path.join(args.plots, _hist_name(s.name)))
    progress(args, f"plots written to {args.plots}")


COMMANDS = {"verify": (VERIFY_HELP, _add_verify_args, run_verify)}
