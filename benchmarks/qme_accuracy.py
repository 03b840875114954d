"""Accuracy of QME vs the baseline fusions on the synthetic whole-body benchmark (issue 4).

Runs the ``qme-ext demo`` pipeline itself (:func:`qme_ext.commands_qme.demo_pipeline`, default
size ``DEMO_SIZES["default"]``) for every regime x data seed and prints, per regime, mean ± std
(ddof 1, over seeds) in percent of overall = Rank-1 + mAP + TAR@1%FAR - FNIR@1%FPIR and of its
parts, for every row (each model alone, each baseline, QME and its Z = 1 / no-QE ablations).
Everything is measured on the test split; nothing is selected or calibrated on it.

Then the issue's target, per regime: ``QME - best baseline`` (the baseline with the best mean
overall) as mean ± std of the per-seed paired differences, judged by :func:`verdict`. Not part
of CI (about 2-7 min per run on 2 shared CPU cores).

    python benchmarks/qme_accuracy.py --json qme_accuracy.json     # 3 regimes x seeds 0,1,2
    python benchmarks/qme_accuracy.py --reduced                     # smaller, for quick looks

With ``--json`` every finished run is written at once; an existing file is reused (finished
runs are not recomputed), so an interrupted benchmark continues where it stopped. Use a fresh
file after changing the code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from qme_ext.commands_qme import BASELINES, DEMO_SIZES, demo_pipeline
from qme_ext.qme.train import overall_score

PARTS = (("Rank-1", "GR_top1"), ("mAP", "GR_mAP"), ("TAR@1%FAR", "TAR@1.00%FAR"),
         ("FNIR@1%FPIR", "FNIR@1.00%FPIR"))
REDUCED = dict(data=dict(num_subjects=60, num_train_subjects=80, num_val_subjects=40,
                         num_unknown=15),
               steps=1500, qe_steps=600, eval_every=150)
QME_ROWS = ("qme", "qme_z1", "qme_noqe")


def _pct(values) -> tuple:
    v = 100 * np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _ms(values) -> str:
    m, s = _pct(values)
    return f"{m:6.2f}±{s:4.2f}"


def _load(path):
    if path and os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def _save(path, runs) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(runs, fh, indent=1)
    os.replace(tmp, path)


def verdict(per_seed: dict, regime: str) -> str:
    """One line: QME minus the best baseline (paired over seeds) and the target's verdict.

    The best baseline is the one with the best mean overall. With d the per-seed paired
    differences (QME - best), mean m and std s (ddof 1): "beats" needs m > s (ahead by more
    than the seed-to-seed spread of the difference); 0 < m <= s is "ahead on the mean only",
    which does not count as beating it; "within noise" is m > -(the larger seed std of the
    two rows' overall).
    """
    ov = {r: [overall_score(m) for m in v] for r, v in per_seed.items()}
    best = max((b for b in BASELINES if b in ov), key=lambda b: np.mean(ov[b]))
    diff = np.subtract(ov["qme"], ov[best])
    dm, ds = _pct(diff)
    noise = max(_pct(ov["qme"])[1], _pct(ov[best])[1])
    wins = int((diff > 0).sum())
    if dm > ds:
        word = "beats"
    elif dm > 0:
        word = "is ahead on the mean only (not beyond the paired spread) of"
    elif dm > -noise:
        word = "is within noise (below) of"
    else:
        word = "is BELOW"
    want = "within noise" if regime == "face_good" else "beat"
    met = dm > ds or (regime == "face_good" and dm > -noise)
    return (f"QME {word} the best baseline ({best}): difference {dm:+.2f}±{ds:.2f} "
            f"(paired over seeds, QME ahead on {wins}/{diff.size} seeds; row noise "
            f"{noise:.2f}); target ({want}) {'MET' if met else 'NOT met'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="data seeds (default 0,1,2)")
    ap.add_argument("--regimes", default="face_good,face_poor,mixed")
    ap.add_argument("--reduced", action="store_true", help="smaller data, 1500 steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="per-run metrics, written after every run (and resumed)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    regimes = args.regimes.split(",")
    sizes = REDUCED if args.reduced else DEMO_SIZES["default"]
    runs = _load(args.json)
    for regime in regimes:
        for seed in seeds:
            key = f"{regime}/{seed}"
            if key in runs:
                continue
            t0 = time.time()
            res = demo_pipeline(regime, seed=seed, device=args.device, sizes=sizes)
            runs[key] = {"rows": res["rows"], "seconds": time.time() - t0,
                         "best_step": {r: res["models"][r].best_step for r in QME_ROWS}}
            ov = res["overall"]
            best = max(BASELINES, key=lambda b: ov[b])
            print(f"[{regime} seed {seed}] {time.time() - t0:.0f}s  qme {100 * ov['qme']:.2f}"
                  f"  best baseline {best} {100 * ov[best]:.2f}", file=sys.stderr, flush=True)
            if args.json:
                _save(args.json, runs)
    for regime in regimes:
        per_seed = {}
        for seed in seeds:
            for row, m in runs[f"{regime}/{seed}"]["rows"].items():
                per_seed.setdefault(row, []).append(m)
        print(f"\n## {regime}: mean ± std over data seeds {seeds} (percent)")
        head = f"{'Row':15s} {'overall':>14s} " + " ".join(f"{p:>13s}" for p, _ in PARTS)
        print(head)
        print("-" * len(head))
        for row, per in per_seed.items():
            print(f"{row:15s} {_ms([overall_score(m) for m in per]):>14s} "
                  + " ".join(f"{_ms([m[k] for m in per]):>13s}" for _, k in PARTS))
        print(verdict(per_seed, regime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
