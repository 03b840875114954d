"""CPU: out-of-core ``metrics.evaluate_file`` vs in-memory ``load_scores`` + ``evaluate``.

One synthetic score file (docs/definitions.rst, §1), one model, float32 (P, G) = 2,000 x 50,000 (400 MB)
and 200 subjects; scale with QME_BENCH_SCALE. The out-of-core run reads row blocks
that fit MAX_MEMORY (default 64MB, about a sixth of the file at full scale).
Reported: time of each path (measured in the same run), and the peak RSS each adds
in a fresh process, relative to the file size. Both paths return the same report.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import report, synthetic_scores
from qme_ext import metrics
from qme_ext.io import ScoreSet, load_scores, save_scores

SCALE = float(os.environ.get("QME_BENCH_SCALE", "1"))
P, G, NS = int(2000 * SCALE), int(50000 * SCALE), 200
MAX_MEMORY = os.environ.get("QME_BENCH_MAX_MEMORY", "64MB")


@pytest.fixture(scope="module")
def score_file(tmp_path_factory):
    S, M, qp, gp, ids, uniq = synthetic_scores(P, G, NS)
    ss = ScoreSet(models=["m"], score_mats={"m": S.numpy()}, merge_score_mats={"m": M.numpy()},
                  q_pids=qp.numpy(), q_camids=ids["q_camids"].numpy(),
                  q_clothes_ids=ids["q_clothes_ids"].numpy(), g_pids=gp.numpy(),
                  g_camids=ids["g_camids"].numpy(), g_clothes_ids=ids["g_clothes_ids"].numpy(),
                  unique_g_pids=uniq.numpy())
    path = tmp_path_factory.mktemp("streaming") / "scores.h5"
    save_scores(path, ss)
    return path


def _in_memory(path):
    ss = load_scores(path)
    return metrics.evaluate(ss.score_mats["m"], ss.merge_score_mats["m"], ss.q_pids,
                            ss.q_camids, ss.q_clothes_ids, ss.g_pids, ss.g_camids,
                            ss.g_clothes_ids, ss.unique_g_pids)


@pytest.mark.benchmark(group="streaming-cpu")
def test_evaluate_file_out_of_core(benchmark, score_file):
    metrics.evaluate_file(score_file, "m", block_rows=max(1, P // 4))  # warm-up
    out = benchmark.pedantic(metrics.evaluate_file, args=(score_file, "m"),
                             kwargs=dict(max_memory=MAX_MEMORY), rounds=3, iterations=1)
    t0 = time.perf_counter()
    ref = _in_memory(score_file)
    baseline = time.perf_counter() - t0
    benchmark.extra_info.update(shape=[P, G], max_memory=MAX_MEMORY,
                                file_bytes=os.path.getsize(score_file))
    report(benchmark, baseline, label="load_scores_plus_evaluate")
    assert out == ref


def test_out_of_core_peak_memory(score_file):
    """Peak RSS added by each path in a fresh process, relative to the file."""
    code = textwrap.dedent(f"""
        import resource, sys
        import numpy as np
        from qme_ext import metrics
        from qme_ext.io import load_scores

        def peak():  # this process's high-water RSS in bytes; VmHWM, unlike ru_maxrss,
            try:     # does not carry the high water of the (large) parent across exec
                with open("/proc/self/status") as fh:
                    return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM"))
            except OSError:
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        path, mode = sys.argv[1], sys.argv[2]
        a = np.random.default_rng(0).normal(size=(6, 20)).astype(np.float32)
        metrics.evaluate(a, a[:, :4], np.arange(6) % 4, np.zeros(6), np.zeros(6),  # warm-up:
                         np.arange(20) % 4, np.ones(20), np.zeros(20), np.arange(4))  # tiny
        before = peak()
        if mode == "stream":
            metrics.evaluate_file(path, "m", max_memory={MAX_MEMORY!r})
        else:
            ss = load_scores(path)
            metrics.evaluate(ss.score_mats["m"], ss.merge_score_mats["m"], ss.q_pids, ss.q_camids,
                             ss.q_clothes_ids, ss.g_pids, ss.g_camids, ss.g_clothes_ids,
                             ss.unique_g_pids)
        print(peak() - before)
    """)
    size = os.path.getsize(score_file)
    for mode in ("stream", "memory"):
        out = subprocess.run([sys.executable, "-c", code, str(score_file), mode],
                             capture_output=True, text=True, check=True)
        extra = int(out.stdout.split()[-1])
        print(f"\n  {mode}: peak extra RSS {extra / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB "
              f"file ({extra / size:.2f}x the file; max_memory {MAX_MEMORY})")
