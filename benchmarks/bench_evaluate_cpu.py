"""CPU: metrics.evaluate vs the numpy/scikit-learn reference path on the same data.

Issue 2 target: 2,000 probes x 50,000 gallery float32, 200 subjects, 2 cores:
>= 20x faster than the reference path, peak memory under 2x the matrix.
Scale with QME_BENCH_SCALE (e.g. 0.1 for a quick look).
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import evaluate_kwargs, report
from qme_ext import metrics
from qme_ext.reference import evaluate_ref

SCALE = float(os.environ.get("QME_BENCH_SCALE", "1"))
P, G, NS = int(2000 * SCALE), int(50000 * SCALE), 200


@pytest.fixture(scope="module")
def data():
    return evaluate_kwargs(P, G, NS)


@pytest.mark.benchmark(group="evaluate-cpu")
def test_evaluate_cpu(benchmark, data):
    metrics.evaluate(**data)  # warm-up: thread start, op registration
    out = benchmark.pedantic(metrics.evaluate, kwargs=data, rounds=3, iterations=1)
    t0 = time.perf_counter()
    ref = evaluate_ref(**data)
    baseline = time.perf_counter() - t0
    benchmark.extra_info.update(shape=[P, G])
    report(benchmark, baseline, label="numpy_sklearn_reference")
    for k in ("GR_top1", "GR_mAP", "CC_mAP", "TAR@1.00%FAR", "FNIR@1.00%FPIR"):
        assert out[k] == pytest.approx(ref[k], abs=1e-12)


def test_evaluate_cpu_peak_memory():
    """Peak RSS added by evaluate, relative to the matrix (measured in a fresh process)."""
    code = textwrap.dedent(f"""
        import resource
        import numpy as np
        from qme_ext import metrics
        rng = np.random.default_rng(0)
        P, G, NS = {P}, {G}, {NS}
        g_pids = rng.integers(0, NS, G); q_pids = rng.integers(0, NS + 20, P)
        S = np.empty((P, G), np.float32)
        for r in range(0, P, 64):  # row blocks: no P x G temporaries before the measurement
            blk = rng.standard_normal((min(64, P - r), G), dtype=np.float32)
            blk += 2.0 * (q_pids[r:r + 64, None] == g_pids[None, :])
            S[r:r + 64] = blk
        M = rng.standard_normal((P, NS)).astype(np.float32)
        cam = lambda n: rng.integers(0, 5, n)
        clo = lambda n: rng.integers(0, 3, n)
        args = (S, M, q_pids, cam(P), clo(P), g_pids, cam(G), clo(G), np.arange(NS))
        metrics.rank_metrics(S[:2], q_pids[:2], g_pids)  # import and warm everything first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        metrics.evaluate(*args)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(after - before, S.nbytes, before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra, matrix, before = (int(v) for v in out.stdout.split())
    print(f"\n  evaluate peak extra memory: {extra / 2**20:.0f} MiB for a "
          f"{matrix / 2**20:.0f} MiB matrix ({extra / matrix:.2f}x); process peak "
          f"{(before + extra) / matrix:.2f}x the matrix")


SHAPES = ((10000, "5 per subject (face-like)"), (1000, "50 per subject"),
          (200, "250 per subject (ReID-like)"))


def _best(fn, n):
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ratios(n_subjects: int, rounds: int = 3, reference: bool = False) -> dict:
    """Best-of-`rounds` seconds of each metric family and of evaluate, and their ratio to
    one numpy pass over the same matrix (S.sum()), all measured in this call."""
    S, M, qp, gp, ids, uniq = synthetic_scores(P, G, n_subjects)
    d = dict(score_mat=S.numpy(), merge_score_mat=M.numpy(), q_pids=qp.numpy(),
             q_camids=ids["q_camids"].numpy(), q_clothes_ids=ids["q_clothes_ids"].numpy(),
             g_pids=gp.numpy(), g_camids=ids["g_camids"].numpy(),
             g_clothes_ids=ids["g_clothes_ids"].numpy(), unique_g_pids=uniq.numpy())
    Sn = d["score_mat"]
    fns = {"numpy_pass": lambda: Sn.sum(),
           "rank_metrics": lambda: metrics.rank_metrics(S, qp, gp),
           "tar_at_far": lambda: metrics.tar_at_far(S, qp, gp),
           "fnir_at_fpir": lambda: metrics.fnir_at_fpir(M, qp, uniq),
           "evaluate": lambda: metrics.evaluate(**d)}
    for f in fns.values():
        f()  # warm-up
    t = {k: _best(f, rounds) for k, f in fns.items()}
    t["numpy_pass"] = min(t["numpy_pass"], _best(fns["numpy_pass"], rounds))
    if reference:
        t["reference"] = _best(lambda: evaluate_ref(**d), 1)
    base = t["numpy_pass"]
    return {k: (v * 1e3, v / base) for k, v in t.items()}


if __name__ == "__main__":
    # python benchmarks/bench_evaluate_cpu.py [--ref]: the ratio table of the docstring.
    import qme_ext
    ref = "--ref" in sys.argv
    print(f"P={P} G={G} float32, threads={qme_ext.get_num_threads()}")
    for ns, label in SHAPES:
        r = ratios(ns, reference=ref)
        ev = r["evaluate"][0]
        cells = "  ".join(f"{k}={ms:.0f}ms ({x:.1f}x)" for k, (ms, x) in r.items())
        extra = f"  evaluate/reference={ev / r['reference'][0]:.4f}" if ref else ""
        print(f"{G // ns} per subject: {cells}{extra}", flush=True)
