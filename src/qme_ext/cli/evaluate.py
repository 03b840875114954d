"""``qme-ext evaluate`` and ``qme-ext example``: a score file (docs/definitions.rst, §1)'s table, JSON,
plots and intervals (in memory or out of core), and the built-in example file."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Optional

from . import protocols, ranked_lists
from .files import CommandFiles
from .common import (PROG, UserError, check_device, check_seed_option, format_comparison,
                     format_table, json_value, progress)

# (header, metric key, std key or None) of the printed table; values are fractions
TABLE_COLUMNS = (
    ("Rank-1", "GR_top1", None),
    ("Rank-5", "GR_top5", None),
    ("Rank-10", "GR_top10", None),
    ("Rank-20", "GR_top20", None),
    ("mAP", "GR_mAP", None),
    ("mINP", "GR_mINP", None),
    ("R-Prec", "GR_RP", None),
    ("MAP@R", "GR_MAP@R", None),
    ("CC-Rank-1", "CC_top1", None),
    ("CC-mAP", "CC_mAP", None),
    ("CC-mINP", "CC_mINP", None),
    ("TAR@0.01%FAR", "TAR@0.01%FAR", None),
    ("TAR@0.1%FAR", "TAR@0.10%FAR", None),
    ("TAR@1%FAR", "TAR@1.00%FAR", None),
    ("FNIR@0.01%FPIR", "FNIR@0.01%FPIR", "FNIR@0.01%FPIR_std"),
    ("FNIR@0.1%FPIR", "FNIR@0.10%FPIR", "FNIR@0.10%FPIR_std"),
    ("FNIR@1%FPIR", "FNIR@1.00%FPIR", "FNIR@1.00%FPIR_std"),
)


# --calibration values that fit on the evaluated file itself (qme_ext.fusion.SELF_CALIBRATIONS)
_SELF = ("self", "self-score")


# ------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------
def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.h5", help="score file (layout of docs/definitions.rst, §1)")
    p.add_argument("--models", help="comma-separated models to use, in this order "
                   "(default: all, file order)")
    p.add_argument("--fusion", help="comma-separated fusion methods, e.g. "
                   "zscore,minmax,rhe,mean,asym_ao,zscore:max")
    p.add_argument("--calibration", default="self", metavar="TRAIN.h5|self|self-score",
                   help="where fusion statistics/weights are fitted: a training file, "
                   "'self' (default; the QME paper's protocol: zscore/minmax normalise "
                   "score_mat and merge_score_mat each with its own statistics, RHE/tanh "
                   "use score_mat's) or 'self-score' (score_mat's statistics for both, the "
                   "rule a training file follows)")
    p.add_argument("--protocol", default="qme", help="metric protocol (default: qme)")
    p.add_argument("--seed", type=int, default=45, help="open-set split seed (default: 45)")
    p.add_argument("--device", default="cpu", help="torch device for fusion: cpu or cuda")
    p.add_argument("--json", metavar="OUT", help="write every metric of every row as JSON")
    p.add_argument("--plots", metavar="DIR", help="write roc.png, det.png, cmc.png and "
                   "score_hist_<row>.png into DIR (with --ci: ROC/DET bands, CMC error bars)")
    p.add_argument("--max-memory", metavar="SIZE", help="evaluate out of core: read the file "
                   "in probe-row blocks whose matrices fit SIZE (e.g. 2GB, 512MiB; "
                   "see qme_ext.streaming)")
    add_bootstrap_arguments(p)
    p.add_argument("--compare", action="append", metavar="A,B", help="paired bootstrap "
                   "comparison of rows A and B (A - B, same replicate weights): difference, "
                   "interval and p-value per metric; repeatable; implies --ci 0.95")
    p.add_argument("--distance", action="store_true", help="the score file holds distances "
                   "(lower = more alike, e.g. torchreid's distmat): the report of their "
                   "negation, thresholds in distance units (not with --fusion or --plots)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ranked_lists.add_arguments(p)
    protocols.add_arguments(p)


def add_bootstrap_arguments(p: argparse.ArgumentParser) -> None:
    """--ci, --n-boot, --boot-seed, --boot-unit (read by :func:`_boot_options`)."""
    p.add_argument("--ci", type=float, metavar="LEVEL", help="bootstrap percentile intervals "
                   "at this level (e.g. 0.95) beside every metric: table cells 88.60 [86.10, "
                   "90.90], '<key>_ci': [lo, hi] in the JSON")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--boot-unit", default="subject", choices=("subject", "probe"),
                   help="what the bootstrap resamples: probe subjects (default) or probes")


def _boot_options(args) -> dict:
    """The bootstrap keyword arguments of metrics.evaluate ({} without --ci/--compare)."""
    if args.ci is None and not args.compare:
        return {}
    level = 0.95 if args.ci is None else args.ci
    from ..metrics.bootstrap import options
    try:
        options(level, args.n_boot, args.boot_seed, args.boot_unit)
    except ValueError as exc:
        raise UserError(str(exc).replace("ci:", "--ci:").replace("n_boot:", "--n-boot:"))
    return dict(ci=level, n_boot=args.n_boot, boot_seed=args.boot_seed,
                boot_unit=args.boot_unit)


def _compare_pairs(args, rows) -> list:
    """[(a, b)] of ``--compare A,B``, each naming two rows of the table."""
    pairs = []
    for text in args.compare or ():
        pair = [t.strip() for t in text.split(",")]
        if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
            raise UserError(f"--compare {text!r}: expected two different rows A,B")
        for name in pair:
            if name not in rows:
                raise UserError(f"--compare {text!r}: no row {name!r}; rows are {list(rows)}")
        pairs.append(tuple(pair))
    if pairs and "compare" in rows:
        raise UserError("--compare: a row is named 'compare', the JSON key of the comparisons")
    return pairs


def _fusion_items(text: Optional[str]) -> list:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if items:  # importing fusion pulls in torch: only when needed
        from ..fusion import parse_method
    for item in items:
        try:
            parse_method(item)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return items


def _check_protocol(name: str) -> None:
    """Reject unknown protocols up front, before any file is read."""
    from ..metrics.core import PROTOCOLS
    if name not in PROTOCOLS:
        raise UserError(f"unknown --protocol {name!r}; choose from {list(PROTOCOLS)}")


def _load_inputs(args, items):
    """(scores, calibration) after every user-input check, before any progress output.

    Validating everything first keeps a user error to the single ``qme-ext: error:`` line.
    """
    from ..io import load_calibration, load_scores
    check_device(args.device)
    _check_protocol(args.protocol)
    scores = load_scores(args.file, models=args.models)
    _check_rows(args, scores.models, scores.merge_score_mats, items)
    merge = scores.merge_score_mats[scores.models[0]]
    _check_evaluation(args, scores.ids(), (scores.num_probes, scores.num_gallery), merge.shape[1])
    calibration = args.calibration if args.calibration in _SELF else "self"
    if items and args.calibration not in _SELF:
        calibration = load_calibration(args.calibration, scores.models)
    return scores, calibration


def _check_evaluation(args, ids: dict, shape: tuple, num_subjects: int) -> None:
    """The ids of ``args.file`` (P, G) = ``shape`` with ``num_subjects`` merge columns and
    ``--seed``, checked by the one function the API's in-memory and out-of-core paths also
    call (:func:`qme_ext.metrics.checks.check_evaluation`), before any matrix is used."""
    from ..metrics.checks import check_evaluation
    try:
        check_evaluation(ids["q_pids"], ids["g_pids"], ids["unique_g_pids"], args.seed,
                         tuple(shape), num_subjects)
    except (ValueError, TypeError) as exc:
        where = "" if str(exc).startswith("seed:") else f"{args.file}: "
        raise UserError(where + str(exc).replace("seed:", "--seed:", 1)) from None


def _check_rows(args, models, merge_models, items) -> None:
    for m in models:
        if m not in merge_models:
            raise UserError(f"{args.file}: model {m!r} has no merge_score_mat (needed by the "
                            f"open-set metrics)")
    for item in items:
        if item in models or items.count(item) > 1:
            raise UserError(f"fusion item {item!r} repeats a model name or another item")


def _streaming_results(args, items) -> dict:
    """{row: report} evaluated out of core (``--max-memory``), after every user-input check."""
    from ..io import load_calibration, load_ids
    from ..metrics.streaming import curves_file, evaluate_file, plan_block_rows
    from ..metrics.nonfinite import NonFiniteScoreWarning
    budget = _budget(args.max_memory)
    check_device(args.device)
    _check_protocol(args.protocol)
    models, ids, shapes = load_ids(args.file, args.models)
    _check_rows(args, models, [m for m in models if f"{m}/merge_score_mat" in shapes], items)
    _check_evaluation(args, ids, shapes[f"{models[0]}/score_mat"],
                      shapes[f"{models[0]}/merge_score_mat"][1])
    boot = _boot_options(args)
    pairs = _compare_pairs(args, list(models) + items)
    try:  # the largest row (a fusion item reads every model) must fit the budget
        plan_block_rows(models, ids, shapes, bool(items), budget, args.file)
    except ValueError as exc:
        raise UserError(f"--max-memory {args.max_memory}: "
                        + str(exc).removeprefix("max_memory: ")) from None
    calibration = None
    if items:
        if args.calibration in _SELF:
            raise UserError("--fusion with --max-memory needs --calibration TRAIN.h5: fitting "
                            f"on the evaluated file itself ({args.calibration}) needs its "
                            "whole matrices")
        calibration = load_calibration(args.calibration, models)
    rows = [(m, dict(model=m)) for m in models]
    rows += [(item, dict(fusion=item, models=models, calibration=calibration)) for item in items]
    plotting = bool(args.plots) and _plots_available()
    results, curves = {}, {}
    for row, how in rows:
        progress(args, f"evaluating {row} out of core (--max-memory {args.max_memory})")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NonFiniteScoreWarning)
                res = evaluate_file(args.file, max_memory=budget, protocol=args.protocol,
                                    seed=args.seed, device=args.device, **how, **boot,
                                    larger_is_better=not args.distance)
            if plotting:
                curves[row] = curves_file(args.file, max_memory=budget, device=args.device,
                                          **how, **boot)
        except ValueError as exc:
            raise UserError(f"{row!r}: {exc}") from None
        results[row] = res
        results[row]["num_nonfinite"] = _nonfinite_line(row, caught, NonFiniteScoreWarning,
                                                        bool(items) and row in models)
        try:
            protocols.add_file(args, results[row], how, budget, args.device, boot)
        except ValueError as exc:
            raise UserError(f"{row!r}: {exc}") from None
    if plotting:
        from .. import plots
        plots.write_curve_plots(args.plots, curves)
        progress(args, f"plots written to {args.plots} (ROC/DET sampled at 64 FARs, "
                       "each point exact)")
    return results, pairs


def _rows(args, scores, calibration, items):
    """{row name: (score_mat (P, G), merge_score_mat (P, S))}: models, then fusion items."""
    rows = {m: (scores.score_mats[m], scores.merge_score_mats[m]) for m in scores.models}
    if not items:
        return rows
    from ..fusion import fuse
    for item in items:
        progress(args, f"fusing {item}")
        try:
            fused = fuse(scores, item, calibration=calibration, name=item, device=args.device)
        except ValueError as exc:
            raise UserError(f"fusion {item!r}: {exc}") from None
        rows[item] = (fused.score_mats[item], fused.merge_score_mats[item])
    return rows


def _plots_available() -> bool:
    from .. import plots
    if not plots.available():
        print(f"{PROG}: warning: matplotlib is not installed; skipping --plots",
              file=sys.stderr)
        return False
    return True


def _write_plots(args, rows, scores, boot) -> None:
    from .. import plots
    if not _plots_available():
        return
    plots.write_comparison_plots(args.plots, {r: mat for r, (mat, _) in rows.items()}, scores,
                                 boot=boot or None)
    progress(args, f"plots written to {args.plots}")


def common_options(args) -> dict:
    """--device, --protocol, --seed, --max-memory and the bootstrap options of evaluate and
    evaluate-embeddings, checked before any file is read (issue 27: an option error is the
    only line, never after progress lines); the bootstrap keyword arguments."""
    check_device(args.device)
    _check_protocol(args.protocol)
    check_seed_option(args.seed)
    if args.max_memory is not None:
        _budget(args.max_memory)
    return _boot_options(args)


def _check_options(args) -> None:
    """Every option of evaluate that needs no file (:func:`common_options` and more)."""
    common_options(args)
    protocols.wanted(args)
    ranked_lists.check_options(args)


def _budget(text) -> int:
    """Bytes of ``--max-memory``; UserError when it is no size."""
    from ..metrics.streaming import parse_memory
    try:
        return parse_memory(text)
    except ValueError:
        raise UserError(f"invalid --max-memory {text!r}; expected a size such as 2GB, "
                        "512MiB or a number of bytes") from None


def run_evaluate(args) -> int:
    _check_options(args)
    items = _fusion_items(args.fusion)
    if getattr(args, "distance", False) and (items or args.plots):
        raise UserError("--distance: not with --fusion or --plots (they read similarities)")
    if args.max_memory is not None:
        if args.ranked_lists is not None:
            raise UserError("--ranked-lists needs the whole matrix: not with --max-memory")
        protocols.wanted(args)  # a bad --single-shot fails before any work
        results, pairs = _streaming_results(args, items)
        _print_results(args, results, pairs)
        protocols.table(args, results)
        return 0
    scores, calibration = _load_inputs(args, items)
    boot = _boot_options(args)
    pairs = _compare_pairs(args, list(scores.models) + items)
    progress(args, f"loaded {args.file}: {len(scores.models)} models, {scores.num_probes} "
                    f"probes x {scores.num_gallery} gallery, {scores.unique_g_pids.size} subjects")
    if not isinstance(calibration, str):
        progress(args, f"calibration {args.calibration}: {calibration.num_probes} probes x "
                        f"{calibration.num_gallery} gallery")
    from ..metrics.core import evaluate
    from ..metrics.nonfinite import NonFiniteScoreWarning
    ranked_lists.check(args, list(scores.models) + items, scores)
    protocols.wanted(args)  # a bad --single-shot fails before any work
    rows = _rows(args, scores, calibration, items)
    ids = (scores.q_pids, scores.q_camids, scores.q_clothes_ids, scores.g_pids, scores.g_camids,
           scores.g_clothes_ids, scores.unique_g_pids)
    results = {}
    for row, (mat, merge) in rows.items():
        progress(args, f"evaluating {row}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NonFiniteScoreWarning)
                res = evaluate(mat, merge, *ids, protocol=args.protocol, seed=args.seed, **boot,
                               larger_is_better=not args.distance)
        except ValueError as exc:  # as the out-of-core path reports it
            raise UserError(f"{row!r}: {exc}") from None
        results[row] = res
        results[row]["num_nonfinite"] = _nonfinite_line(row, caught, NonFiniteScoreWarning,
                                                        bool(items) and row in scores.models)
    # the protocols and ranked lists rank similarities: distances are read as their negation
    ranked = ({r: (-mat, -merge) for r, (mat, merge) in rows.items()} if args.distance
              else rows)
    protocols.add(args, results, ranked, scores, boot)
    _print_results(args, results, pairs)
    protocols.table(args, results)
    if args.plots:
        _write_plots(args, rows, scores, boot)
    ranked_lists.write(args, ranked, scores)
    return 0


def _nonfinite_line(row: str, caught, category, fused: bool) -> dict:
    """One warning line on stderr for a row whose matrices held NaN/inf (``--quiet`` or not),
    other warnings passed on; the counts per matrix (zero when there was none)."""
    counts = {k: dict.fromkeys(("nan", "posinf", "neginf"), 0)
              for k in ("score_mat", "merge_score_mat")}
    for w in caught:
        if issubclass(w.category, category):
            counts.update(w.message.counts)
            tail = ("; the fusion rows replace them first (NaN -> 0, +-inf -> the largest "
                    "finite float32 of that sign)") if fused else ""
            print(f"{PROG}: warning: {row}: {w.message}{tail}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return counts


def _print_results(args, results: dict, pairs=()) -> None:
    """The table on stdout, the ``--compare`` comparisons below it and, with ``--json``,
    every metric of every row (``"compare": {"A - B": {key: {diff, ci, p_value}}}``)."""
    print(format_table(results, TABLE_COLUMNS))
    compared = {}
    if pairs:
        from ..metrics.core import compare
        any_rep = next(iter(results.values()))
        unit = "probe subjects" if any_rep.boot.unit == "subject" else "probes"
        for a, b in pairs:
            compared[f"{a} - {b}"] = compare(results[a], results[b])
            print()
            print(format_comparison(
                f"{a} - {b}: paired bootstrap over {unit}, {any_rep.boot.n_boot} replicates, "
                f"{100 * any_rep.boot.ci:g}% intervals, points", compared[f"{a} - {b}"],
                TABLE_COLUMNS, any_rep.boot.n_boot))
    if args.json:
        out = {r: json_value(dict(res)) for r, res in results.items()}
        if compared:
            out["compare"] = json_value(compared)
        from ..io import write_atomic
        write_atomic(args.json, json.dumps(out, indent=2))
        progress(args, f"metrics written to {args.json}")


# ------------------------------------------------------------------------------------------
# example
# ------------------------------------------------------------------------------------------
def _add_example(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.h5", help="output score file")
    p.add_argument("--probes", type=int, default=60, help="number of probes (default 60)")
    p.add_argument("--gallery", type=int, default=120, help="gallery entries (default 120)")
    p.add_argument("--subjects", type=int, default=20, help="gallery subjects (default 20)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def run_example(args) -> int:
    from ..datasets import make_example_scoreset
    from ..io import save_scores
    try:
        scores = make_example_scoreset(num_probes=args.probes, num_gallery=args.gallery,
                                       num_subjects=args.subjects, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    save_scores(args.file, scores)
    progress(args, f"wrote {args.file}: models {','.join(scores.models)}, "
                    f"{scores.num_probes} probes x {scores.num_gallery} gallery")
    return 0


FILES = {
    "evaluate": CommandFiles(
        inputs=("file", "calibration", "gallery_images", "probe_images"),
        literals=(("calibration", _SELF),), image_lists=("gallery_images", "probe_images"),
        outputs=(("json", "file"), ("plots", "plots"), ("ranked_prefix", "prefix")),
        when=(("ranked_prefix", "ranked_lists"),)),
    "example": CommandFiles(outputs=(("file", "file"),)),
}

COMMANDS = {
    "evaluate": ("evaluate models and fusions of a score file", _add_evaluate, run_evaluate),
    "example": ("write a small synthetic score file", _add_example, run_example),
}
