"""Benchmark helpers: synthetic score files and the device/version record."""
import platform
import statistics
import time

import numpy as np
import pytest
import torch

import qme_ext


def synthetic_scores(P, G, n_subjects, seed=0, device="cpu", dtype=torch.float32,
                     genuine_shift=2.0):
    """(P, G) scores with a genuine shift (0: pure noise), ids, cameras, clothes and a
    (P, S) merge matrix."""
    gen = torch.Generator(device=device).manual_seed(seed)
    g_pids = torch.randint(0, n_subjects, (G,), generator=gen, device=device)
    q_pids = torch.randint(0, n_subjects + max(1, n_subjects // 10), (P,), generator=gen,
                           device=device)
    S = torch.randn((P, G), generator=gen, device=device, dtype=torch.float32)
    S += genuine_shift * (q_pids[:, None] == g_pids[None, :])
    S = S.to(dtype)
    M = torch.randn((P, n_subjects), generator=gen, device=device).to(dtype)
    ids = dict(q_camids=torch.randint(0, 5, (P,), generator=gen, device=device),
               q_clothes_ids=torch.randint(0, 3, (P,), generator=gen, device=device),
               g_camids=torch.randint(0, 5, (G,), generator=gen, device=device),
               g_clothes_ids=torch.randint(0, 3, (G,), generator=gen, device=device))
    return S, M, q_pids, g_pids, ids, torch.arange(n_subjects, device=device)


def device_info(device="cpu") -> dict:
    """Where and with what a measurement was taken: versions, CPU, threads and, for a CUDA
    device, the GPU's name, memory, theoretical peak bandwidth and the CUDA runtimes."""
    cfg = qme_ext.build_config()
    info = {"qme_ext": qme_ext.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "threads": qme_ext.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        peak, source = peak_bandwidth(torch.device(device))
        info.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}",
                    peak_GB_per_s=None if peak is None else round(peak / 1e9),
                    peak_source=source, cuda_runtime=cfg["cuda_runtime_version"],
                    torch_cuda=torch.version.cuda, cuda_architectures=cfg["cuda_architectures"])
    return info


# Theoretical DRAM bandwidth (bytes/s) where the device properties do not give it
# (CUDA 13 no longer reports the memory clock). Longest name first.
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12),
                  ("H100", 3.35e12), ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12),
                  ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12))


def peak_bandwidth(device) -> tuple:
    """(bytes/s or None, how it was found): 2 x memory clock x bus width when torch
    exposes them, else the PEAK_BANDWIDTH table by device name."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0) or 0
    bus_bits = getattr(props, "memory_bus_width", 0) or 0
    if clock_khz > 0 and bus_bits > 0:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width"
    for name, peak in PEAK_BANDWIDTH:
        if name.lower() in props.name.lower():
            return peak, f"table ({name})"
    return None, "unknown"


def _benchmark_device(item) -> str:
    # convention: a benchmark runs on the GPU iff its test or file name says "cuda"
    return "cuda" if "cuda" in item.nodeid.lower() else "cpu"


@pytest.fixture(autouse=True)
def _record_device_info(request):
    """Every pytest-benchmark result carries device_info() in its extra_info."""
    if "benchmark" in request.fixturenames:
        bench = request.getfixturevalue("benchmark")
        bench.extra_info.update(device_info(_benchmark_device(request.node)))
    yield


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py when the folder is given (``pytest benchmarks``): the project's
    python_files pattern only names test_*.py. Explicit paths are collected by pytest."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_synced(benchmark, fn, device, rounds: int = 5) -> None:
    """pytest-benchmark of fn() synchronised on CUDA, after one untimed call (op
    registration, thread start, CUDA module load) and one warm-up round."""
    def run():
        fn()
        sync(device)
    run()
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)


def median_time(fn, device, repeat=5) -> float:
    """Median wall seconds of fn() after one warm-up call, synchronised on CUDA: the
    baselines timed in the same run as the benchmark."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def report(benchmark, baseline_s, bytes_touched=None, label="baseline"):
    """Record the ratio to a baseline timed in the same run, and GB/s if given."""
    med = benchmark.stats.stats.median
    benchmark.extra_info[f"{label}_s"] = baseline_s
    benchmark.extra_info[f"speedup_vs_{label}"] = baseline_s / med
    line = f"\n  {benchmark.name}: {med * 1e3:.1f} ms, {label} {baseline_s * 1e3:.1f} ms, " \
           f"x{baseline_s / med:.1f}"
    if bytes_touched:
        gbs = bytes_touched / med / 1e9
        benchmark.extra_info["GB_per_s"] = gbs
        line += f", {gbs:.0f} GB/s"
        peak = benchmark.extra_info.get("peak_GB_per_s")
        if peak:
            benchmark.extra_info["percent_of_peak"] = 100 * gbs / peak
            line += f" ({100 * gbs / peak:.0f}% of {peak} GB/s peak)"
    print(line)


requires_cuda = pytest.mark.skipif(not qme_ext.cuda_available(), reason="needs a CUDA GPU")


def evaluate_kwargs(P: int, G: int, NS: int) -> dict:
    """metrics.evaluate's keyword arguments (numpy) of :func:`synthetic_scores`."""
    S, M, qp, gp, ids, uniq = synthetic_scores(P, G, NS)
    return dict(score_mat=S.numpy(), merge_score_mat=M.numpy(), q_pids=qp.numpy(),
                q_camids=ids["q_camids"].numpy(), q_clothes_ids=ids["q_clothes_ids"].numpy(),
                g_pids=gp.numpy(), g_camids=ids["g_camids"].numpy(),
                g_clothes_ids=ids["g_clothes_ids"].numpy(), unique_g_pids=uniq.numpy())
