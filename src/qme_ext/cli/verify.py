"""``qme-ext verify``: verification metrics of genuine/impostor score files.

``qme-ext verify gen.txt imp.txt`` (pyeer lists, one score per line; several systems as
consecutive genuine/impostor pairs), ``qme-ext verify scores-dev scores-eval`` (bob 4/5-column
files, one system each), CSV or ``.npz``/``.npy`` pair files (:func:`qme_ext.io.load_pairs`).
Prints one table row per system, ``--json`` writes every key of
:meth:`qme_ext.metrics.verification.VerificationResult.as_dict`, ``--plots DIR`` writes roc.png,
det.png and score_hist_<system>.png. Each input is read once, so pipes work
(``qme-ext verify <(zcat gen.gz) <(zcat imp.gz)``); an output that is an input is refused.

``qme-ext verify --dev DEV... --eval EVAL...`` (each one pair file, or a GENUINE IMPOSTOR
list pair) fixes the thresholds on the development set (EER, each ``--fmrs`` target, by
``--far-convention``, default bob.measure's ``far_threshold``) and reports FMR, FNMR and
HTER on the evaluation set (:func:`qme_ext.metrics.dev_eval.dev_eval`), below the usual
table of both sets; ``--json`` adds ``"dev_eval"`` and ``"epc"``, ``--plots`` adds epc.png
(bob.measure's expected performance curve).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .files import CommandFiles
from .common import PROG, UserError, check_device, format_table, json_value, progress

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
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="score files (pair files, or genuine/impostor list pairs)")
    p.add_argument("--dev", nargs="+", metavar="FILE", help="development set (one pair file, "
                   "or GENUINE IMPOSTOR lists): thresholds are fixed on it; needs --eval")
    p.add_argument("--eval", nargs="+", metavar="FILE", help="evaluation set (same forms as "
                   "--dev): error rates at the dev thresholds")
    p.add_argument("--far-convention", choices=("conservative", "qme"), default=None,
                   help="FNMR@FMR threshold rule: conservative = bob.measure far_threshold "
                   "(FMR <= target; the default with --dev), qme = k-th largest impostor "
                   "(the default otherwise)")
    p.add_argument("--epc-points", type=int, default=100,
                   help="alphas of the EPC with --dev/--eval (default 100)")
    p.add_argument("--p-target", type=float, default=0.01,
                   help="prior of a genuine trial for minDCF/actDCF (default 0.01)")
    p.add_argument("--c-miss", type=float, default=1.0, help="cost of a miss (default 1)")
    p.add_argument("--c-fa", type=float, default=1.0, help="cost of a false accept (default 1)")
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


def _systems(args, files=None) -> list:
    """[Pairs] of the command line's files (or of `files`), after every check. Each file is
    read once (a pipe such as ``<(cat gen.txt)`` cannot be read twice)."""
    from ..io import load_pairs
    from ..io.pair_files import read_pair_source, score_list_format
    paths = args.files if files is None else files
    for f in paths:
        if not os.path.exists(f):
            raise UserError(f"{f}: no such file")
    files, systems, i = [read_pair_source(f) for f in paths], [], 0
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
                         ("AUC", "AUC", None), ("Cllr", "Cllr", None, "plain"),
                         ("minCllr", "minCllr", None, "plain"),
                         ("minDCF", "minDCF", None, "plain")])


# (header, key of OperatingPoint) of the dev -> eval table; rates in percent
DEV_EVAL_COLUMNS = (("dev FMR", "dev_fmr"), ("dev FNMR", "dev_fnmr"), ("eval FMR", "eval_fmr"),
                    ("eval FNMR", "eval_fnmr"), ("eval HTER", "eval_hter"))


def _one_set(args, option: str, files: list):
    """The single system of --dev or --eval."""
    got = _systems(args, files)
    if len(got) != 1:
        raise UserError(f"{option}: expected one system (a pair file or GENUINE IMPOSTOR "
                        f"lists), got {len(got)}")
    return got[0]


def _options(args) -> dict:
    costs = dict(p_target=args.p_target, c_miss=args.c_miss, c_fa=args.c_fa)
    from ..metrics.calibration import check_costs
    try:
        check_costs(**costs)
    except ValueError as exc:
        raise UserError("--" + str(exc).replace("_", "-", 1)) from None
    return costs


def run_verify(args) -> int:
    fmrs, fnmrs = _rates(args.fmrs, "--fmrs"), _rates(args.fnmrs, "--fnmrs")
    check_device(args.device)
    costs = _options(args)
    if (args.dev is None) != (args.eval is None):
        raise UserError("--dev and --eval go together")
    from ..metrics.dev_eval import MAX_EPC_POINTS
    if not 2 <= args.epc_points <= MAX_EPC_POINTS:
        raise UserError(f"--epc-points: expected an integer in [2, {MAX_EPC_POINTS}], got "
                        f"{args.epc_points}")
    if args.dev is not None:
        if args.files:
            raise UserError("give either FILE... or --dev/--eval, not both")
        if args.names:
            raise UserError("--names: the systems of --dev/--eval are named dev and eval")
        systems = [_one_set(args, "--dev", args.dev), _one_set(args, "--eval", args.eval)]
        systems[0].name, systems[1].name = "dev", "eval"
    elif not args.files:
        raise UserError("give score FILEs, or --dev DEV... --eval EVAL...")
    else:
        systems = _systems(args)
    far_convention = args.far_convention or ("conservative" if args.dev else "qme")
    from ..metrics.nonfinite import describe_nonfinite
    from ..metrics.verification import verification
    results, reports = {}, {}
    for s in systems:
        progress(args, f"{s.name}: {s.genuine.size} genuine, {s.impostor.size} impostor scores "
                       f"({s.format})")
        try:
            res = verification(s.genuine, s.impostor, fmrs, fnmrs, args.convention,
                               far_convention=far_convention, device=args.device, warn=False,
                               larger_is_better=not args.distance, **costs)
        except ValueError as exc:
            raise UserError(f"{s.name}: {exc}") from None
        text = describe_nonfinite(res.num_nonfinite)
        if text:
            print(f"{PROG}: warning: {s.name}: {text}", file=sys.stderr)
        results[s.name] = res
        reports[s.name] = dict(res.as_dict(), num_nonfinite=res.num_nonfinite)
    print(format_table(reports, _columns(fmrs, fnmrs, args.convention)))
    out = {r: json_value(rep) for r, rep in reports.items()}
    de = None
    if args.dev is not None:
        de = _dev_eval(args, systems, fmrs, far_convention, costs)
        out["dev_eval"] = json_value(de.as_dict())
        out["epc"] = {"alpha": json_value(list(de.epc[0])),
                      "eval_HTER": json_value(list(de.epc[1])),
                      "dev_threshold": json_value(list(de.epc[2]))}
    if args.json:
        from ..io import write_atomic
        write_atomic(args.json, json.dumps(out, indent=2))
        progress(args, f"metrics written to {args.json}")
    if args.plots:
        _plots(args, systems, results, de)
    return 0


def _dev_eval(args, systems, fmrs, far_convention, costs):
    """Print the dev -> eval table; return the DevEvalResult."""
    from ..metrics.dev_eval import dev_eval
    dev, ev = systems
    de = dev_eval(dev.genuine, dev.impostor, ev.genuine, ev.impostor, fmrs,
                  far_convention=far_convention, epc_points=args.epc_points,
                  convention=args.convention, larger_is_better=not args.distance, **costs)
    rows = {p.name: {key: getattr(p, key) for _, key in DEV_EVAL_COLUMNS} for p in de.points}
    table = format_table(rows, [(h, k, None) for h, k in DEV_EVAL_COLUMNS])
    thr = "\n".join(f"  {p.name}: threshold {p.threshold:.6g}" for p in de.points)
    print(f"\nthresholds fixed on dev ({far_convention} FMR rule), rates in %:")
    print(table)
    print(thr)
    return de


def _plots(args, systems, results, de=None) -> None:
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
                                  os.path.join(args.plots, plots.hist_plot_name(s.name)))
    if de is not None:
        plots.plot_epc(de.epc[0], de.epc[1], os.path.join(args.plots, "epc.png"))
    progress(args, f"plots written to {args.plots}")


FILES = {"verify": CommandFiles(inputs=("files", "dev", "eval"),
                                outputs=(("json", "file"), ("plots", "plots")))}

COMMANDS = {"verify": (VERIFY_HELP, _add_verify_args, run_verify)}
