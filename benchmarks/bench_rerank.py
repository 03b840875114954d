"""k-reciprocal re-ranking: qme_ext.rerank.k_reciprocal (sparse top-k lists, inverted
lists, the rerank_jaccard kernel) against the literal dense algorithm
(qme_ext.reference.rerank, every (P+G)^2 matrix of the published code), same inputs.

    python benchmarks/bench_rerank.py [--sizes 200x800,500x2000] [--k1 20 --k2 6]
    python -m pytest benchmarks/bench_rerank.py --benchmark-only     # one small cell

Each method runs in a fresh child process so that its peak memory is its own: the peak
resident set (VmHWM) minus the resident set just before the call, in MiB (inputs and
output excluded, the method's working memory included; on CUDA the peak of
torch.cuda.max_memory_allocated above the inputs instead). Times are one call's wall
time after a warm-up call on a small problem. The dense reference is skipped where its
(P+G)^2 float64 matrices would exceed --dense-max-gib. Inputs: cosine similarities of
clustered unit embeddings (dimension 64), the same in both children (fixed seed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def embeddings(P: int, G: int, seed: int = 0, dim: int = 64, ids: int = 0):
    rng = np.random.default_rng(seed)
    ids = ids or max(2, (P + G) // 10)
    centres = rng.normal(size=(ids, dim))
    q = centres[rng.integers(0, ids, P)] + 0.8 * rng.normal(size=(P, dim))
    g = centres[rng.integers(0, ids, G)] + 0.8 * rng.normal(size=(G, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T, q @ q.T, g @ g.T


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def child(method: str, P: int, G: int, k1: int, k2: int, device: str) -> dict:
    import torch
    from qme_ext import rerank
    from qme_ext.reference.rerank import k_reciprocal_ref
    qg, qq, gg = embeddings(P, G)
    if method == "sparse":
        args = [torch.from_numpy(x).to(device) for x in (qg, qq, gg)]
        fn = lambda a: rerank.k_reciprocal(*a, k1=k1, k2=k2)  # noqa: E731
        small = [torch.from_numpy(x).to(device) for x in embeddings(20, 40, seed=1)]
    else:
        args = (qg, qq, gg)
        fn = lambda a: k_reciprocal_ref(*a, k1, k2)  # noqa: E731
        small = embeddings(20, 40, seed=1)
    fn(small)  # warm-up: imports, first kernel calls
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _reset_peak()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn(args)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (_status_kib("VmHWM") - rss0) / 1024
    res = dict(method=method, P=P, G=G, k1=k1, k2=k2, device=device, seconds=dt,
               peak_mib=peak)
    if device == "cuda":
        res["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    out = out.cpu().numpy() if hasattr(out, "cpu") else out
    np.save(os.environ["QME_BENCH_OUT"], out) if os.environ.get("QME_BENCH_OUT") else None
    return res


def run_child(method, P, G, k1, k2, device, out_path=None, threads=None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["QME_NUM_THREADS"] = str(threads)
    if out_path:
        env["QME_BENCH_OUT"] = out_path
    r = subprocess.run([sys.executable, __file__, "--child", method, "--sizes", f"{P}x{G}",
                        "--k1", str(k1), "--k2", str(k2), "--device", device],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100x400,250x1000,500x2000",
                    help="comma-separated PxG cells")
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense-max-gib", type=float, default=2.0)
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of both children (on a "
                    "shared, loaded machine 1 avoids thread oversubscription)")
    ap.add_argument("--json", help="write the rows as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cells = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    if a.child:
        print(json.dumps(child(a.child, *cells[0], a.k1, a.k2, a.device)))
        return 0
    import tempfile
    rows = []
    print(f"{'P':>6} {'G':>6} {'method':>7} {'seconds':>9} {'peak MiB':>9}  max|diff|")
    with tempfile.TemporaryDirectory() as tmp:
        for P, G in cells:
            sp = os.path.join(tmp, "sparse.npy")
            r = run_child("sparse", P, G, a.k1, a.k2, a.device, sp, a.threads)
            rows.append(r)
            print(f"{P:>6} {G:>6} {'sparse':>7} {r['seconds']:>9.3f} {r['peak_mib']:>9.1f}"
                  + (f"  (cuda peak {r['cuda_peak_mib']:.1f} MiB)" if "cuda_peak_mib" in r else ""))
            if 4 * (P + G) ** 2 * 8 / 2**30 > a.dense_max_gib:
                print(f"{P:>6} {G:>6} {'dense':>7}   skipped (> {a.dense_max_gib} GiB)")
                continue
            dp = os.path.join(tmp, "dense.npy")
            r = run_child("dense", P, G, a.k1, a.k2, "cpu", dp, a.threads)
            r["max_abs_diff"] = float(np.abs(np.load(sp) - np.load(dp)).max())
            rows.append(r)
            print(f"{P:>6} {G:>6} {'dense':>7} {r['seconds']:>9.3f} {r['peak_mib']:>9.1f}  "
                  f"{r['max_abs_diff']:.2e}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


def test_rerank_cpu(benchmark):
    """One small cell under pytest-benchmark (the script gives the memory comparison)."""
    import torch
    from qme_ext import rerank
    qg, qq, gg = (torch.from_numpy(x) for x in embeddings(100, 400))
    benchmark.pedantic(lambda: rerank.k_reciprocal(qg, qq, gg), rounds=3, iterations=1)
    benchmark.extra_info.update(shape=[100, 400], k1=20, k2=6)


if __name__ == "__main__":
    sys.exit(main())
