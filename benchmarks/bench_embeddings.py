"""Embeddings in, metrics out at MegaFace scale (issue 21): ``metrics.evaluate_embeddings``
of 3,500 probes x 1,000,000 gallery x 512-d float16 features within a memory budget.

    python benchmarks/bench_embeddings.py --quick          # 350 x 100,000, 256MB budget
    nice python benchmarks/bench_embeddings.py             # 3,500 x 1,000,000, 2GB budget
    python benchmarks/bench_embeddings.py --device cuda    # the same on a GPU

The features are synthetic (one centre per subject plus noise, cosine scores), generated
in chunks into memory as float16 before anything is measured: they are the input (1 GB
of gallery at full size), not part of the budget. Reported, from one run:

* ``peak_extra_rss_mib``: the process's high-water RSS (``VmHWM``) during the evaluation
  minus its RSS before it: what the evaluation added on top of the features, to compare
  with ``--max-memory`` (which bounds the score block; module docstring of
  :mod:`qme_ext.metrics.streaming`);
* ``matmul_alone_s``: one walk of the same tiled matmuls over every probe block, nothing
  else (the floor any evaluation of these features pays once);
* ``evaluate_s``: the whole ``evaluate_embeddings`` call, split into ``matmul_s`` (the
  scoring it ran over every walk: reading and converting gallery tiles, normalising, the
  matmuls) and ``passes_s`` (the rest: the engine's ranking, open-set and radix-select
  passes, candidates, the input checks and template pass, finishing);
* ``ratio_to_matmul``: ``evaluate_s / matmul_alone_s``.

With ``--repeats N`` the matmul walk and the evaluation are run N times in turn; the
repeat with the best ratio is reported (each ratio is of one repeat's pair, so the load
of a shared machine cancels), all repeats are listed, and the peak is the largest seen.
The floor walk uses a source whose gallery is already checked (``check_now``): the
evaluation does the feature checks and template sums in its own first walk.

Nothing is asserted on time. Without --quick the run takes minutes on a few cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from qme_ext import metrics
from qme_ext.metrics.embeddings import embedding_source

# per-coordinate noise around unit-variance subject centres: a same-subject cosine of
# about 1 / (1 + NOISE^2) = 0.06 against impostors of 0 +- 0.044 at 512-d (not trivial)
NOISE = 4.0


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def features(P: int, G: int, D: int, S: int, seed: int = 0, chunk: int = 65536):
    """float16 probe (P, D) and gallery (G, D) features and the id vectors, in chunks (the
    peak stays near the arrays themselves)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((S, D), dtype=np.float32)
    g_pids = np.sort(rng.integers(0, S, G))
    q_pids = rng.integers(0, S, P)
    gallery = np.empty((G, D), np.float16)
    for a in range(0, G, chunk):
        b = min(a + chunk, G)
        x = centres[g_pids[a:b]]
        x += rng.standard_normal((b - a, D), dtype=np.float32) * NOISE
        gallery[a:b] = x
    probe = (centres[q_pids] + rng.standard_normal((P, D), dtype=np.float32) * NOISE)
    ids = dict(q_pids=q_pids, q_camids=np.zeros(P, np.int64),
               q_clothes_ids=np.zeros(P, np.int64), g_pids=g_pids,
               g_camids=np.ones(G, np.int64), g_clothes_ids=np.zeros(G, np.int64))
    return probe.astype(np.float16), gallery, ids


def _warm_up(q, g, ids, probes: int = 64, gallery: int = 100_000) -> None:
    """One small evaluation (the first probes against the first gallery entries)."""
    small = {k: (v[:probes] if k.startswith("q_") else v[:gallery]) for k, v in ids.items()}
    metrics.evaluate_embeddings(q[:probes], g[:gallery], **small, block_rows=probes)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="350 x 100,000 x 512, 256MB budget")
    ap.add_argument("--probes", type=int)
    ap.add_argument("--gallery", type=int)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--subjects", type=int)
    ap.add_argument("--max-memory", help="evaluate_embeddings's budget (default 2GB; quick 256MB)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--repeats", type=int, default=1, help="matmul walk + evaluation pairs; "
                    "the best ratio's pair is reported (a noisy machine)")
    ap.add_argument("--no-matmul-alone", action="store_true", help="skip the separate matmul "
                    "walk (saves one walk's time at full size); the floor is then the "
                    "matmul time per walk measured inside the evaluation")
    args = ap.parse_args(argv)
    P = args.probes or (350 if args.quick else 3500)
    G = args.gallery or (100_000 if args.quick else 1_000_000)
    S = args.subjects or (1_000 if args.quick else 10_000)
    budget = args.max_memory or ("256MB" if args.quick else "2GB")
    dev = torch.device(args.device)

    t0 = time.perf_counter()
    q, g, ids = features(P, G, args.dim, S)
    gen_s = time.perf_counter() - t0
    if dev.type == "cuda":  # features on the GPU: the matmuls and passes run there
        q, g = torch.from_numpy(q).to(dev), torch.from_numpy(g).to(dev)
    out = dict(device=str(dev), cpu_threads=torch.get_num_threads(), probes=P, gallery=G,
               dim=args.dim, subjects=S, dtype="float16", metric="cosine", max_memory=budget,
               feature_bytes=int(q.nbytes + g.nbytes), generate_s=round(gen_s, 2),
               load_avg_1min=round(os.getloadavg()[0], 2))

    # warm-up: the first call of the custom ops imports torch's compile machinery (seconds,
    # once per process), which is no part of the evaluation's cost
    _warm_up(q, g, ids)
    floor_src = None
    if not args.no_matmul_alone:
        floor_src, _ = embedding_source(q, g, g_pids=ids["g_pids"], max_memory=budget)
        if hasattr(floor_src, "check_now"):  # (older qme_ext: checked when made)
            floor_src.check_now()  # the checks and templates are not part of the floor

    best = None
    for rep_i in range(args.repeats):
        run = {}
        if floor_src is not None:  # the matmuls alone: one walk of the same tiles, dropped
            t0 = time.perf_counter()
            for blk in floor_src.blocks(scores=True):
                del blk
            run["matmul_alone_s"] = time.perf_counter() - t0
        base = rss_bytes()
        hwm_ok = reset_hwm()
        sources = []
        t0 = time.perf_counter()

        def bar(walk, done, total):
            print(f"\r  repeat {rep_i + 1}, walk {walk}: {done}/{total} probes, "
                  f"{time.perf_counter() - t0:.0f} s", end="", file=sys.stderr, flush=True)

        rep = metrics.evaluate_embeddings(q, g, **ids, max_memory=budget, source_out=sources,
                                          progress=bar)
        print(file=sys.stderr)
        total = time.perf_counter() - t0
        peak = rss_bytes("VmHWM")
        t = sources[0].timing
        walks = sources[0].walks
        floor = run.get("matmul_alone_s", t["matmul"] / max(walks, 1))
        run.update(block_rows=sources[0].block_rows, evaluate_s=total, matmul_s=t["matmul"],
                   passes_s=total - t["matmul"], walks=walks,
                   matmul_per_walk_s=t["matmul"] / max(walks, 1), ratio_to_matmul=total / floor,
                   rss_before_mib=base / 2 ** 20, peak_extra_rss_mib=(peak - base) / 2 ** 20,
                   hwm_reset=hwm_ok)
        run = {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}
        print(f"  repeat {rep_i + 1}: {json.dumps(run)}", file=sys.stderr)
        out.setdefault("repeats", []).append(run)
        if best is None or run["ratio_to_matmul"] < best["ratio_to_matmul"]:
            best = run
    # the best repeat's numbers (ratio measured within one repeat); the peak: the largest
    out.update(best)
    out["peak_extra_rss_mib"] = max(r["peak_extra_rss_mib"] for r in out["repeats"])
    if not out["hwm_reset"]:
        out["note"] = "VmHWM could not be reset: the peak includes the feature generation"
    out["report"] = {k: rep[k] for k in ("GR_top1", "GR_mAP", "TAR@0.01%FAR", "TAR@0.10%FAR",
                                         "TAR@1.00%FAR", "FNIR@1.00%FPIR")}
    print(json.dumps(out, indent=2))
    print(f"evaluate_embeddings / its matmuls: {out['ratio_to_matmul']:.2f}x (best of "
          f"{args.repeats}), {out['walks']} walk(s), peak +{out['peak_extra_rss_mib']:.0f} MiB "
          f"RSS, load {out['load_avg_1min']}", file=sys.stderr)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh, indent=2)
        os.replace(tmp, args.json)
    return out


if __name__ == "__main__":
    main()
