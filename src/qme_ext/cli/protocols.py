"""``qme-ext evaluate --multi-query max|mean`` and ``--single-shot REPEATS``: the ReID
protocols of :mod:`qme_ext.metrics.protocols` beside the main table (keys ``MQ_*`` and
``SGS_*`` in the JSON, a second table on stdout)."""
from __future__ import annotations

import argparse
from typing import Optional

from .common import UserError, format_table

RANKS = (1, 5, 10, 20)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--multi-query", choices=("max", "mean"), help="also report multi-query "
                   "Rank-k/mAP (MQ_*): the probes of one subject and camera pooled by max or "
                   "mean of their scores (Market-1501 / MARS protocol)")
    p.add_argument("--single-shot", type=int, metavar="REPEATS", help="also report the CUHK03 "
                   "single-gallery-shot CMC (SGS_*, mean and std over REPEATS random "
                   "one-entry-per-subject galleries, drawn with --seed)")


def wanted(args) -> bool:
    """Whether a protocol table is asked for; UserError for a bad --single-shot (checked
    before any file is read)."""
    if args.single_shot is not None:
        from ..metrics.protocols import check_repeats
        try:
            check_repeats(args.single_shot, "--single-shot")
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return args.multi_query is not None or args.single_shot is not None


def add(args, results: dict, rows: dict, scores, boot: Optional[dict] = None) -> None:
    """Add the MQ_* / SGS_* keys to every row's report (``rows[row] = (score_mat, ...)``);
    ``boot`` (``--ci``): their ``_ci`` intervals too."""
    if not wanted(args):
        return
    from ..metrics.protocols import multi_query_metrics, single_gallery_shot
    boot = boot or {}
    for row, (mat, _) in rows.items():
        mq = sgs = None
        if args.multi_query is not None:
            mq = multi_query_metrics(mat, scores.q_pids, scores.g_pids, scores.q_camids,
                                     scores.g_camids, reduce=args.multi_query, max_rank=20,
                                     **boot)
        if args.single_shot is not None:
            sgs = single_gallery_shot(mat, scores.q_pids, scores.g_pids, scores.q_camids,
                                      scores.g_camids, repeats=args.single_shot, seed=args.seed,
                                      **boot)
        _put(results[row], mq, sgs)


def add_file(args, report: dict, how: dict, max_memory, device, boot: dict) -> None:
    """The MQ_* / SGS_* keys of one row of a score file read in blocks (``--max-memory``;
    ``how``: the row's ``model=`` or ``fusion=``/``models=``/``calibration=``), the same
    values as :func:`add` gives in memory."""
    if not wanted(args):
        return
    from ..metrics import bootstrap
    from ..metrics.protocols import (multi_query_source, queries_per_pass,
                                     single_gallery_shot_source)
    from ..metrics.streaming import _file_source
    source, ids = _file_source(args.file, how.get("model"), how.get("fusion"), how.get("models"),
                               how.get("calibration"), max_memory, None, device, None, 2.0, 0,
                               None, args.seed)
    if getattr(args, "distance", False):  # distances ranked as their negation, as in memory
        from ..metrics.orientation import NegatedSource
        source = NegatedSource(source)
    b = bootstrap.options(boot["ci"], boot["n_boot"], boot["boot_seed"],
                          boot["boot_unit"]) if boot else None
    mq = sgs = None
    if args.multi_query is not None:
        mq = multi_query_source(source, ids["q_pids"], ids["g_pids"], ids["q_camids"],
                                ids["g_camids"], reduce=args.multi_query, max_rank=20,
                                queries_per_pass=queries_per_pass(source.num_cols, max_memory),
                                boot=b)
    if args.single_shot is not None:
        sgs = single_gallery_shot_source(source, ids["q_pids"], ids["g_pids"], ids["q_camids"],
                                         ids["g_camids"], repeats=args.single_shot,
                                         seed=args.seed, boot=b)
    _put(report, mq, sgs)


def _put(rep: dict, mq, sgs) -> None:
    """The report keys of a multi-query RankResult and a SingleShotResult (either None)."""
    if mq is not None:
        for k in RANKS:
            rep[f"MQ_top{k}"] = float(mq.cmc[k - 1])
        rep["MQ_mAP"] = mq.mAP
        if mq.cmc_ci is not None:
            for k in RANKS:
                rep[f"MQ_top{k}_ci"] = tuple(float(v) for v in mq.cmc_ci[k - 1])
            rep["MQ_mAP_ci"] = mq.mAP_ci
    if sgs is not None:
        for k in RANKS:
            rep[f"SGS_top{k}"] = float(sgs.cmc[k - 1])
            rep[f"SGS_top{k}_std"] = float(sgs.cmc_std[k - 1])
        rep["SGS_mAP"], rep["SGS_mAP_std"] = sgs.mAP, sgs.mAP_std
        if sgs.cmc_ci is not None:
            for k in RANKS:
                rep[f"SGS_top{k}_ci"] = tuple(float(v) for v in sgs.cmc_ci[k - 1])
            rep["SGS_mAP_ci"] = sgs.mAP_ci


def table(args, results: dict) -> None:
    """The second table (percent; SGS cells carry their std over the repeats)."""
    if not wanted(args):
        return
    cols = []
    if args.multi_query is not None:
        cols += [(f"MQ-{args.multi_query}-R{k}", f"MQ_top{k}", None) for k in (1, 5)]
        cols += [(f"MQ-{args.multi_query}-mAP", "MQ_mAP", None)]
    if args.single_shot is not None:
        cols += [(f"SGS-R{k}", f"SGS_top{k}", f"SGS_top{k}_std") for k in (1, 5, 10)]
        cols += [("SGS-mAP", "SGS_mAP", "SGS_mAP_std")]
    print()
    print(format_table(results, cols))
