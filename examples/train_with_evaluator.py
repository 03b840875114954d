"""Train a small embedding network and evaluate it every epoch with qme_ext.metrics.Evaluator
(CPU, seconds; CUDA when --device cuda).

Synthetic person re-identification data: each identity is a point in a latent space; a
sample is the identity plus noise plus a per-camera shift, pushed through a fixed random
nonlinear "camera" into 48-d inputs. Training identities and test identities are
disjoint; the test set is a query set and a gallery set seen by several cameras, streamed
in mixed batches with an ``is_query`` mask, as a ReID test loader yields them.

Every epoch: a few hundred steps of softmax classification over the training identities
(normalised embeddings, scaled cosine logits), then ``Evaluator.update`` on every test
batch under ``torch.no_grad`` and ``Evaluator.compute`` for Rank-1, mAP, mINP,
R-precision and MAP@R (the GR protocol: same identity and same camera is junk).

Under ``torchrun --nproc-per-node 2 examples/train_with_evaluator.py`` (gloo), each process
trains the same model (same seed) and evaluates its share of the test batches;
``compute`` gathers them and returns the one-process report on every rank.

Run: python examples/train_with_evaluator.py [--epochs N] [--device cpu|cuda] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qme_ext.metrics import Evaluator

LATENT, INPUT, EMB, CAMERAS = 12, 48, 24, 4
KEYS = ("GR_top1", "GR_mAP", "GR_mINP", "GR_RP", "GR_MAP@R")


def make_camera(seed: int) -> nn.Module:
    """A fixed random nonlinear map from the latent space to the inputs."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(LATENT, 64), nn.Tanh(), nn.Linear(64, INPUT))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(max(1, p.shape[-1])))
    return net.requires_grad_(False)


def make_split(rng: np.random.Generator, ids: np.ndarray, per_id: int, camera: nn.Module,
               shifts: np.ndarray, noise: float = 0.6):
    """(inputs (N, INPUT) float32, pids (N,), camids (N,)) of ``per_id`` samples per id."""
    pids = np.repeat(ids, per_id)
    cams = rng.integers(0, CAMERAS, pids.size)
    centres = np.random.default_rng(1000).normal(size=(ids.max() + 1, LATENT))
    z = centres[pids] + noise * rng.normal(size=(pids.size, LATENT)) + shifts[cams]
    x = camera(torch.from_numpy(z.astype(np.float32)))
    return x, pids, cams


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(INPUT, 96), nn.ReLU(), nn.Linear(96, EMB))

    def forward(self, x):
        return self.net(x)


def evaluate_epoch(model, test, device, rank: int = 0, world: int = 1, batch: int = 64) -> dict:
    """Evaluator over the test stream (this rank's contiguous share of the batches, so
    that the ranks' entries gathered in rank order are the stream's order), one report."""
    x, pids, cams, is_query = test
    starts = np.array_split(np.arange(0, len(pids), batch), world)[rank]
    ev = Evaluator(metric="cosine")
    model.eval()
    with torch.no_grad():
        for a in starts:
            s = slice(int(a), int(a) + batch)
            ev.update(model(x[s].to(device)), pids[s], cams[s], is_query=is_query[s])
    model.train()
    return ev.compute()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the per-epoch reports (the KEYS) here")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:  # torchrun: every process trains the same model, evaluation is shared
        import torch.distributed as dist
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    camera = make_camera(args.seed)
    shifts = 0.5 * rng.normal(size=(CAMERAS, LATENT))
    train_ids, test_ids = np.arange(0, 60), np.arange(60, 100)
    xtr, ptr, _ = make_split(rng, train_ids, 20, camera, shifts)
    xq, pq, cq = make_split(rng, test_ids, 2, camera, shifts)
    xg, pg, cg = make_split(rng, test_ids, 6, camera, shifts)
    # one mixed test stream with an is_query mask, as a ReID test loader yields it
    order = rng.permutation(len(pq) + len(pg))
    test = (torch.cat([xq, xg])[order], np.concatenate([pq, pg])[order],
            np.concatenate([cq, cg])[order], (np.arange(len(order)) < len(pq))[order])

    device = torch.device(args.device)
    model = Embedder().to(device)
    head = nn.Parameter(torch.randn(len(train_ids), EMB, device=device) * 0.1)
    opt = torch.optim.Adam(list(model.parameters()) + [head], lr=3e-3)
    xtr, ytr = xtr.to(device), torch.from_numpy(ptr).to(device)

    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs + 1):
        if epoch:  # epoch 0 evaluates the untrained model
            for _ in range(args.steps):
                idx = torch.randint(0, len(ytr), (128,), device=device)
                emb = F.normalize(model(xtr[idx]), dim=1)
                logits = 16.0 * emb @ F.normalize(head, dim=1).T
                loss = F.cross_entropy(logits, ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        rep = evaluate_epoch(model, test, device, rank, world)
        history.append({k: float(rep[k]) for k in KEYS})
        if rank == 0:
            cells = "  ".join(f"{k[3:]} {100 * rep[k]:5.1f}" for k in KEYS)
            print(f"epoch {epoch}: {cells}  ({time.perf_counter() - start:.1f} s)")
    if args.json and rank == 0:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(history, f, indent=1)
        os.replace(tmp, args.json)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return history


if __name__ == "__main__":
    main()
