"""Benchmark helpers: synthetic score files and the device/version record."""
import platform

import numpy as np
import pytest
import torch

import qme_ext


def synthetic_scores(P, G, n_subjects, seed=0, device="cpu", dtype=torch.float32):
    """(P, G) scores with a genuine shift, ids, cameras, clothes and a (P, S) merge matrix."""
    gen = torch.Generator(device=device).manual_seed(seed)
    g_pids = torch.randint(0, n_subjects, (G,), generator=gen, device=device)
    q_pids = torch.randint(0, n_subjects + max(1, n_subjects // 10), (P,), generator=gen,
                           device=device)
    S = torch.randn((P, G), generator=gen, device=device, dtype=torch.float32)
    S += 2.0 * (q_pids[:, None] == g_pids[None, :])
    S = S.to(dtype)
    M = torch.randn((P, n_subjects), generator=gen, device=device).to(dtype)
    ids = dict(q_camids=torch.randint(0, 5, (P,), generator=gen, device=device),
               q_clothes_ids=torch.randint(0, 3, (P,), generator=gen, device=device),
               g_camids=torch.randint(0, 5, (G,), generator=gen, device=device),
               g_clothes_ids=torch.randint(0, 3, (G,), generator=gen, device=device))
    return S, M, q_pids, g_pids, ids, torch.arange(n_subjects, device=device)


def device_info(device):
    info = {"qme_ext": qme_ext.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "threads": qme_ext.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda_runtime"] = qme_ext.build_config()["cuda_runtime_version"]
    return info


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
    print(line)


requires_cuda = pytest.mark.skipif(not qme_ext.cuda_available(), reason="needs a CUDA GPU")
