"""``qme-ext evaluate --ranked-lists N``: the top-k gallery of the N worst and N best probes
of one row, as a CSV and a PNG grid (:func:`qme_ext.plots.ranked_lists`)."""
from __future__ import annotations

import argparse
import os

from .common import UserError, progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranked-lists", type=int, metavar="N", help="write the top-k gallery "
                   "entries of the N worst and N best probes of one row (genuine marked) to "
                   "PREFIX_<row>.csv and PREFIX_<row>.png (see --ranked-*)")
    p.add_argument("--ranked-row", metavar="ROW", help="row of --ranked-lists: a model or a "
                   "--fusion item (default: the first model)")
    p.add_argument("--ranked-k", type=int, default=10, metavar="K",
                   help="gallery entries per probe in --ranked-lists (default 10)")
    p.add_argument("--ranked-by", default="ap", choices=("ap", "rank"), help="what makes a "
                   "probe worst/best in --ranked-lists: its AP (default) or first-hit rank")
    p.add_argument("--ranked-prefix", default="ranked_lists", metavar="PREFIX",
                   help="output path prefix of --ranked-lists (default: ranked_lists)")
    p.add_argument("--gallery-images", metavar="FILE", help="text file of image paths, one "
                   "line per gallery entry in file order (blank: none), drawn in the grid")
    p.add_argument("--probe-images", metavar="FILE", help="the same for the probes")


def _image_list(path, n: int, option: str):
    if path is None:
        return None
    try:
        with open(path) as fh:
            lines = [line.rstrip("\n") for line in fh]
    except OSError as exc:
        raise UserError(f"{option} {path}: {exc.strerror}") from None
    if len(lines) != n:
        raise UserError(f"{option} {path}: expected {n} lines (one per entry), got {len(lines)}")
    base = os.path.dirname(os.path.abspath(path))
    return [os.path.join(base, s.strip()) if s.strip() else None for s in lines]


def check_options(args) -> bool:
    """Whether ranked lists are asked for; UserError for a bad N or K (before any file is
    read)."""
    if args.ranked_lists is None:
        return False
    if args.ranked_lists < 1 or args.ranked_k < 1:
        raise UserError("--ranked-lists N and --ranked-k K must be >= 1")
    return True


def check(args, rows, scores) -> tuple:
    """Reject unusable --ranked-* options before any work; (probe, gallery) image lists."""
    if not check_options(args):
        return None, None
    if args.ranked_row is not None and args.ranked_row not in rows:
        raise UserError(f"--ranked-row {args.ranked_row!r}: no such row; rows are {list(rows)}")
    return (_image_list(args.probe_images, scores.num_probes, "--probe-images"),
            _image_list(args.gallery_images, scores.num_gallery, "--gallery-images"))


def write(args, rows: dict, scores) -> None:
    """PREFIX_<row>.csv and .png of the chosen row (``rows[row] = (score_mat, merge)``)."""
    if args.ranked_lists is None:
        return
    q_img, g_img = check(args, rows, scores)
    from .. import plots
    row = args.ranked_row or next(iter(rows))
    stem = f"{args.ranked_prefix}_{plots.safe_name(row)}"
    png = stem + ".png" if plots.available() else None
    try:
        plots.ranked_lists(rows[row][0],
                           scores.q_pids, scores.g_pids, scores.q_camids, scores.g_camids,
                           n=args.ranked_lists, k=min(args.ranked_k, scores.num_gallery),
                           by=args.ranked_by, csv_path=stem + ".csv", png_path=png,
                           probe_images=q_img, gallery_images=g_img, title=row)
    except (ValueError, OSError) as exc:
        raise UserError(f"--ranked-lists: {exc}") from None
    progress(args, f"ranked lists of {row} written to {stem}.csv"
                   + (f" and {png}" if png else " (matplotlib missing: no PNG)"))
