"""CPU: metrics.evaluate with bootstrap intervals (ci=0.95, n_boot=1000) vs without.

Issue 12 target: at 2,000 probes x 50,000 gallery float32 (200 subjects) the report with
1000 replicates costs at most 3x the plain report. Run as a script (prints the timings
and the ratio) or under pytest-benchmark; QME_BENCH_SCALE scales the shape.
"""
import os
import time

import numpy as np

from conftest import evaluate_kwargs
from qme_ext import metrics

SCALE = float(os.environ.get("QME_BENCH_SCALE", "1"))
P, G, NS = int(2000 * SCALE), int(50000 * SCALE), 200
N_BOOT = int(os.environ.get("QME_BENCH_NBOOT", "1000"))


def _data():
    return evaluate_kwargs(P, G, NS)


def _best(fn, rounds=3):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def measure(rounds=3):
    data = _data()
    metrics.evaluate(**data)  # warm-up
    t_plain, plain = _best(lambda: metrics.evaluate(**data), rounds)
    t_boot, boot = _best(lambda: metrics.evaluate(**data, ci=0.95, n_boot=N_BOOT), rounds)
    assert all(boot[k] == v for k, v in plain.items())
    return t_plain, t_boot, boot


def test_bootstrap_cost():
    t_plain, t_boot, boot = measure(rounds=2)
    print(f"\n  evaluate {P}x{G}: {t_plain:.2f} s; with ci (n_boot={N_BOOT}): {t_boot:.2f} s "
          f"({t_boot / t_plain:.2f}x)")


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    t_plain, t_boot, boot = measure()
    print(f"evaluate {P}x{G}: {t_plain:.2f} s; with ci (n_boot={N_BOOT}): {t_boot:.2f} s "
          f"({t_boot / t_plain:.2f}x)")
    for k in ("GR_top1", "GR_mAP", "TAR@1.00%FAR", "FNIR@1.00%FPIR"):
        print(f"  {k}: {boot[k]:.4f} [{boot[k + '_ci'][0]:.4f}, {boot[k + '_ci'][1]:.4f}]")
