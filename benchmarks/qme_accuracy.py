"""Accuracy of QME vs the baseline fusions on the synthetic whole-body benchmark.

Runs the ``qme-ext demo`` pipeline (:func:`qme_ext.commands_qme.demo_pipeline`) for several data
seeds x regimes and prints, per regime, mean ± std (ddof 1, over seeds) of overall = Rank-1 +
mAP + TAR@1%FAR - FNIR@1%FPIR and of its parts, in percent, for every row (each model alone,
each baseline, QME and its Z = 1 / no-QE ablations). Not part of CI.

    python benchmarks/qme_accuracy.py                  # 3 seeds x 3 regimes, demo size
    python benchmarks/qme_accuracy.py --reduced        # smaller data, shorter training
    python benchmarks/qme_accuracy.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from qme_ext.commands_qme import DEMO_SIZES, demo_pipeline

PARTS = (("Rank-1", "GR_top1"), ("mAP", "GR_mAP"), ("TAR@1%FAR", "TAR@1.00%FAR"),
         ("FNIR@1%FPIR", "FNIR@1.00%FPIR"))
REDUCED = dict(data=dict(num_subjects=60, num_train_subjects=80, num_val_subjects=40,
                         num_unknown=15),
               steps=1500, qe_steps=600, eval_every=150)


def _ms(values) -> str:
    v = 100 * np.asarray(values, dtype=np.float64)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():6.2f}±{std:4.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="data seeds (default 0,1,2)")
    ap.add_argument("--regimes", default="face_good,face_poor,mixed")
    ap.add_argument("--reduced", action="store_true", help="smaller data, 1500 steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write per-run metrics here")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = REDUCED if args.reduced else DEMO_SIZES["default"]
    runs = {}
    for regime in args.regimes.split(","):
        for seed in seeds:
            t0 = time.time()
            res = demo_pipeline(regime, seed=seed, device=args.device, sizes=sizes)
            runs[(regime, seed)] = res["rows"]
            print(f"[{regime} seed {seed}] {time.time() - t0:.0f}s  qme {100 * res['overall']['qme']:.1f}"
                  f"  zscore {100 * res['overall']['zscore']:.1f}", file=sys.stderr, flush=True)
    for regime in args.regimes.split(","):
        rows = runs[(regime, seeds[0])].keys()
        print(f"\n## {regime}: mean ± std over seeds {seeds} (percent)")
        head = f"{'Row':15s} {'overall':>14s} " + " ".join(f"{p:>13s}" for p, _ in PARTS)
        print(head)
        print("-" * len(head))
        for row in rows:
            per = [runs[(regime, s)][row] for s in seeds]
            overall = [m["GR_top1"] + m["GR_mAP"] + m["TAR@1.00%FAR"] - m["FNIR@1.00%FPIR"]
                       for m in per]
            print(f"{row:15s} {_ms(overall):>14s} "
                  + " ".join(f"{_ms([m[k] for m in per]):>13s}" for _, k in PARTS))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{r}/{s}": v for (r, s), v in runs.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
