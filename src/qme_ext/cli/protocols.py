"""``qme-ext evaluate --multi-query max|mean`` and ``--single-shot REPEATS``: the ReID
protocols of :mod:`qme_ext.metrics.protocols` beside the main table (keys ``MQ_*`` and
``SGS_*`` in the JSON, a second table on stdout)."""
from __future__ import annotations

import argparse

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


def add(args, results: dict, rows: dict, scores) -> None:
    """Add the MQ_* / SGS_* keys to every row's report (``rows[row] = (score_mat, ...)``)."""
    if not wanted(args):
        return
    from ..metrics.protocols import multi_query_metrics, single_gallery_shot
    for row, (mat, _) in rows.items():
        rep = results[row]
        if args.multi_query is not None:
            r = multi_query_metrics(mat, scores.q_pids, scores.g_pids, scores.q_camids,
                                    scores.g_camids, reduce=args.multi_query, max_rank=20)
            for k in RANKS:
                rep[f"MQ_top{k}"] = float(r.cmc[k - 1])
            rep["MQ_mAP"] = r.mAP
        if args.single_shot is not None:
            r = single_gallery_shot(mat, scores.q_pids, scores.g_pids, scores.q_camids,
                                    scores.g_camids, repeats=args.single_shot, seed=args.seed)
            for k in RANKS:
                rep[f"SGS_top{k}"] = float(r.cmc[k - 1])
                rep[f"SGS_top{k}_std"] = float(r.cmc_std[k - 1])
            rep["SGS_mAP"], rep["SGS_mAP_std"] = r.mAP, r.mAP_std


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
