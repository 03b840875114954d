"""Achieved memory bandwidth of every CUDA kernel at a large size (docs/definitions.rst, §6).

Each kernel is run through its custom op (``qme_ext::<op>``) once to warm up, then
timed (CUDA events, median of ``--repeat`` calls); the report gives the bytes the
kernel must touch (each input read once, each output written once: the docs/definitions.rst, §6
definition), the achieved GB/s and the percentage of the device's theoretical peak
(2 x memory clock x bus width from the device properties, else a table for
H100/H200/A100; see conftest.peak_bandwidth).

    python benchmarks/bandwidth_report.py                 # H100-sized problems (~4 GB each)
    python benchmarks/bandwidth_report.py --scale 0.1     # smaller GPUs / a quick look
    python benchmarks/bandwidth_report.py --json bw.json
    python benchmarks/bandwidth_report.py --device cpu --scale 0.001   # dry run of the code
    python benchmarks/bandwidth_report.py --scale 0.25 --budget 60      # first contact (~1 s a case)
    python benchmarks/bandwidth_report.py --scale 1e-4 --once           # one small call per kernel
                                                                        # (under compute-sanitizer)

The first row is a device-to-device copy of 2 GiB (scaled): the measured copy bandwidth,
the practical ceiling of a kernel that reads its input once and writes its output once;
every row also gives its percentage of that measured copy. ``--budget`` bounds the whole
report: the cases left when it runs out are listed as skipped, and the JSON is still
written. Without a GPU (or without the CUDA module) it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import qme_ext
from conftest import device_info, peak_bandwidth  # run as a script: benchmarks/ is on sys.path
from qme_ext.ops import (evaluation as _ops, fusion as _ops_fusion, qme as _ops_qme,
                         quality as _ops_quality, topk as _ops_topk)
from qme_ext.metrics.core import _same_pid_candidates


def timed(fn, device: torch.device, repeat: int) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(dev: torch.device, scale: float):
    """(name, shape text, bytes touched, callable) for each kernel; inputs made lazily so
    that only one problem occupies the device at a time."""
    gen = torch.Generator(device=dev).manual_seed(0)
    n = lambda v: max(1, int(v * scale))  # noqa: E731

    def rank_counts(dtype):
        P, G = 1000, n(1_000_000)
        S = torch.randn((P, G), generator=gen, device=dev).to(dtype)
        q = torch.randint(0, 1100, (P,), generator=gen, device=dev)
        g = torch.randint(0, 1000, (G,), generator=gen, device=dev)
        cand = _same_pid_candidates(q, g)
        flags = torch.ones_like(cand.index, dtype=torch.uint8)  # every same-pid entry good
        run = lambda: _ops.rank_counts(S, cand.offsets, cand.index, flags, 1,  # noqa: E731
                                       cand.max_per_probe)
        return f"{P}x{G} {str(dtype)[6:]}", nbytes(S, cand.index, flags), run

    def key_histogram(level):
        P, G = 1000, n(1_000_000)
        S = torch.randn((P, G), generator=gen, device=dev)
        if level == 0:
            pre, shift, pshift = torch.zeros(0, dtype=torch.int64, device=dev), 16, 32
        else:  # the second radix pass: low digit under three 16-bit prefixes
            pre = torch.tensor([0xBF80, 0x3F80, 0x4000], dtype=torch.int64, device=dev)
            shift, pshift = 0, 16
        run = lambda: _ops.key_histogram(S, shift, 16, pre, pshift, 0)  # noqa: E731
        return f"{P}x{G} float32", nbytes(S), run

    def openset_stats():
        P, C, NS = n(100_000), 10_000, 10
        M = torch.randn((P, C), generator=gen, device=dev)
        gcol = torch.randint(-1, C, (P,), generator=gen, device=dev)
        enrolled = torch.randint(0, 2, (NS, C), generator=gen, device=dev, dtype=torch.uint8)
        run = lambda: _ops.openset_stats(M, gcol, enrolled)  # noqa: E731
        return f"{P}x{C} float32, {NS} splits", nbytes(M, gcol) + 2 * NS * P * 8, run

    def expert(backward):
        B, K, G, Z, H = 1024, 3, n(100_000), 2, 9
        x = torch.randn((B, K, G), generator=gen, device=dev)
        p = [torch.rand(s, generator=gen, device=dev) for s in
             ((Z, K), (Z, K), (Z, H, K), (Z, H), (Z, H), (Z,), (B, Z))]
        if not backward:
            run = lambda: _ops_qme.expert_fuse(x, *p, 0.1, 1)  # noqa: E731
            return f"{B}x{K}x{G} float32", nbytes(x) + B * G * 4, run
        grad = torch.randn((B, G), generator=gen, device=dev)
        run = lambda: _ops_qme.expert_fuse_bwd(grad, x, *p, 0.1, 1)  # noqa: E731
        return f"{B}x{K}x{G} float32", 2 * nbytes(x) + nbytes(grad), run

    def epilogue(out_dtype):
        P, G = 8192, n(65536)
        cos = torch.rand((P, G), generator=gen, device=dev) * 2 - 1
        qp = torch.rand(P, generator=gen, device=dev, dtype=torch.float64) * 30
        qg = torch.rand(G, generator=gen, device=dev, dtype=torch.float64) * 30
        out = torch.empty((P, G), dtype=out_dtype, device=dev)
        run = lambda: _ops_quality.qmagface_epilogue(cos, qp, qg, 0.077, 0.126, out)  # noqa
        return f"{P}x{G} float32 -> {str(out_dtype)[6:]}", nbytes(cos, qp, qg, out), run

    def aggregate():
        N, D, T = n(4_000_000), 512, max(1, n(100_000))
        f = torch.randn((N, D), generator=gen, device=dev).to(torch.bfloat16)
        w = torch.rand(N, generator=gen, device=dev)
        cuts = torch.sort(torch.randint(0, N, (T - 1,), generator=gen, device=dev)).values
        off = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), cuts,
                         torch.full((1,), N, dtype=torch.int64, device=dev)])
        run = lambda: _ops_quality.template_aggregate(f, w, off, True)  # noqa: E731
        return f"{N}x{D} bfloat16, {T} templates", nbytes(f, w, off) + T * (D + 2) * 4, run

    def fuse(K):
        P, G = 10_000, n(27_000)  # K float32 matrices of ~1.08 GB each at scale 1
        mats = [torch.randn((P, G), generator=gen, device=dev) for _ in range(K)]
        w = torch.full((K,), 1.0 / K, dtype=torch.float64, device=dev)
        run = lambda: _ops_fusion.fuse_scores(  # noqa: E731
            mats, [0] * K, [0.1] * K, [1.3] * K, _ops_fusion.RULE_SUM, w, 2.0, torch.float32)
        return f"{K} x {P}x{G} float32 -> float32", nbytes(*mats) + P * G * 4, run

    def stats():
        P, G = 10_000, n(100_000)  # 4 GB of float32 at scale 1
        S = torch.randn((P, G), generator=gen, device=dev)
        q = torch.randint(0, 1000, (P,), generator=gen, device=dev)
        g = torch.randint(0, 1000, (G,), generator=gen, device=dev)
        run = lambda: _ops_fusion.score_stats(S, q, g)  # noqa: E731
        return f"{P}x{G} float32", nbytes(S, q, g), run

    def topk(k):
        P, G = 1000, n(1_000_000)
        S = torch.randn((P, G), generator=gen, device=dev)
        k = min(k, G)  # small scales (--once under the sanitizer)
        run = lambda: _ops_topk.topk(S, k, True)  # noqa: E731
        return f"{P}x{G} float32, k={k}", nbytes(S) + P * k * 12, run

    def copy():
        N = max(1024, n(2**29))  # float32 elements: 2 GiB at scale 1
        src = torch.empty(N, dtype=torch.float32, device=dev).uniform_(generator=gen)
        dst = torch.empty_like(src)
        run = lambda: dst.copy_(src)  # noqa: E731
        return f"{N} float32 copy", 2 * nbytes(src), run

    return [
        ("copy (baseline)", copy),
        ("fuse_scores", lambda: fuse(3)),
        ("score_stats", stats),
        ("topk", lambda: topk(10)),
        ("topk", lambda: topk(1000)),
        ("rank_counts", lambda: rank_counts(torch.float32)),
        ("rank_counts", lambda: rank_counts(torch.float16)),
        ("key_histogram (pass 1)", lambda: key_histogram(0)),
        ("key_histogram (pass 2)", lambda: key_histogram(1)),
        ("openset_stats", openset_stats),
        ("expert_fuse", lambda: expert(False)),
        ("expert_fuse_bwd", lambda: expert(True)),
        ("qmagface_epilogue", lambda: epilogue(torch.float32)),
        ("qmagface_epilogue", lambda: epilogue(torch.bfloat16)),
        ("template_aggregate", aggregate),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size factor (default 1)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole report; the cases left are skipped")
    ap.add_argument("--once", action="store_true",
                    help="call each kernel once, untimed (for compute-sanitizer)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not qme_ext.cuda_available():
        print("bandwidth_report: skipped, no CUDA GPU / CUDA module "
              f"(cuda_compiled={qme_ext.cuda_compiled()}, "
              f"torch.cuda.is_available()={torch.cuda.is_available()})")
        return 0
    info = device_info(dev)
    peak = peak_bandwidth(dev)[0] if dev.type == "cuda" else None
    print("environment:", info)
    print(f"{'kernel':24s} {'problem':36s} {'ms':>9s} {'GB':>7s} {'GB/s':>8s} {'% peak':>7s} "
          f"{'% copy':>7s}")
    rows, skipped = [], []
    t_start = time.perf_counter()
    copy_gbs = None

    def write_json():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"environment": info, "copy_GB_per_s": copy_gbs, "rows": rows,
                           "skipped": skipped}, fh, indent=1)

    for name, make in cases(dev, args.scale):
        if args.budget is not None and time.perf_counter() - t_start > args.budget:
            skipped.append(name)
            print(f"{name:24s} skipped (budget of {args.budget:.0f} s spent)", flush=True)
            continue
        shape, touched, run = make()
        if args.once:
            run()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            rows.append(dict(kernel=name, problem=shape))
            print(f"{name:24s} {shape:36s} ran once", flush=True)
        else:
            sec = timed(run, dev, args.repeat)
            gbs = touched / sec / 1e9
            if copy_gbs is None and name.startswith("copy"):
                copy_gbs = gbs
            pct = 100 * touched / sec / peak if peak else None
            pcopy = 100 * gbs / copy_gbs if copy_gbs else None
            rows.append(dict(kernel=name, problem=shape, seconds=sec, bytes=touched, GB_per_s=gbs,
                             percent_of_peak=pct, percent_of_copy=pcopy))
            print(f"{name:24s} {shape:36s} {sec * 1e3:9.2f} {touched / 1e9:7.2f} {gbs:8.0f} "
                  f"{'n/a' if pct is None else f'{pct:6.1f}%':>7s} "
                  f"{'n/a' if pcopy is None else f'{pcopy:6.1f}%':>7s}", flush=True)
        del run
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        write_json()  # after every case: a timeout still leaves the rows so far
    write_json()
    if skipped:
        print(f"skipped for the budget: {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
