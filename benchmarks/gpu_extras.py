"""Two device figures the issues ask for, measured in one short run (CPU and CUDA in the
same process, so the ratio is a same-run measurement):

1. QME training time per stage-2 step (issue 9): the demo's default data, the robust
   recipe with ``--steps`` steps, on ``cpu`` and on ``cuda``.
2. Bootstrap cost (issue 12): ``metrics.evaluate`` with ``ci=0.95, n_boot=1000`` against
   the same call without, at P x G on each device.

    python benchmarks/gpu_extras.py --json out.json              # both parts, both devices
    python benchmarks/gpu_extras.py --devices cpu --steps 20 --probes 200 --gallery 5000

Timings are wall-clock seconds (CUDA synchronised); nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_time(device: str, steps: int) -> dict:
    from qme_ext.cli.qme import DEMO_SIZES
    from qme_ext.datasets.synthetic import synthetic_wholebody
    from qme_ext.qme.train import TrainConfig, fit_qme, fit_quality_estimator

    size = DEMO_SIZES["default"]
    data = synthetic_wholebody("mixed", seed=0, **size["data"])
    out = {}
    for n in (steps, 2 * steps):  # the difference removes the warm start and set-up
        cfg = TrainConfig(seed=42, device=device, max_steps=n, qe_steps=50, eval_every=n,
                          quiet=True)
        qe = fit_quality_estimator(data["train"], data["val"], cfg)
        sync(device)
        t0 = time.perf_counter()
        fit_qme(data["train"], data["val"], qe, cfg)
        sync(device)
        out[n] = time.perf_counter() - t0
    return {"steps": [steps, 2 * steps], "fit_s": [out[steps], out[2 * steps]],
            "s_per_step": (out[2 * steps] - out[steps]) / steps}


def bootstrap_cost(device: str, P: int, G: int, per_subject: int, repeat: int) -> dict:
    from qme_ext import metrics
    g = torch.Generator().manual_seed(0)
    n_sub = max(1, G // per_subject)
    g_pids = torch.arange(G) % n_sub
    q_pids = torch.randint(0, n_sub, (P,), generator=g)
    S = torch.randn(P, G, generator=g) + 3.0 * (q_pids[:, None] == g_pids[None, :])
    M = torch.randn(P, n_sub, generator=g) + 3.0 * (q_pids[:, None] == torch.arange(n_sub))
    args = [S.to(device), M.to(device), q_pids.to(device), torch.zeros(P, dtype=torch.long).to(device),
            torch.zeros(P, dtype=torch.long).to(device), g_pids.to(device),
            torch.ones(G, dtype=torch.long).to(device), torch.zeros(G, dtype=torch.long).to(device),
            torch.arange(n_sub).to(device)]
    times = {}
    for name, kw in (("plain", {}), ("ci1000", {"ci": 0.95, "n_boot": 1000})):
        best = float("inf")
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            metrics.evaluate(*args, **kw)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return {"P": P, "G": G, "per_subject": per_subject, "plain_s": times["plain"],
            "ci1000_s": times["ci1000"], "ratio": times["ci1000"] / times["plain"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--probes", type=int, default=2000)
    ap.add_argument("--gallery", type=int, default=50000)
    ap.add_argument("--per-subject", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--parts", default="train,bootstrap")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    devices = [d for d in a.devices.split(",")
               if d == "cpu" or (d.startswith("cuda") and torch.cuda.is_available())]
    res = {"devices": devices, "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for part in a.parts.split(","):
        for d in devices:
            try:
                if part == "train":
                    r = train_step_time(d, a.steps)
                else:
                    r = bootstrap_cost(d, a.probes, a.gallery, a.per_subject, a.repeat)
            except Exception as e:  # a measurement that fails is reported, not hidden
                r = {"error": f"{type(e).__name__}: {e}"}
            res[f"{part}_{d}"] = r
            print(part, d, json.dumps(r), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
