"""Quality-aware face recognition, end to end on synthetic identities (CPU, seconds).

1. Synthetic "faces": each identity is a point in a latent space; a sample is the
   identity plus noise whose size grows as its (hidden) capture quality drops,
   pushed through a fixed random nonlinear "camera" into 64-d inputs.
2. Train a small MLP embedding network with the MagFace head (or AdaFace with
   --head adaface): MagFace ties the embedding norm to sample quality.
3. Held-out identities: fit QMagFace alpha/beta on one half (pairs within it),
   evaluate TAR@FAR with qme_ext.metrics on the other half (probe x gallery),
   plain cosine vs QMagFace scores.

Run: python examples/quality_aware_face.py [--head magface|adaface] [--steps N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qme_ext import metrics
from qme_ext.quality import AdaFaceHead, MagFaceHead, QMagFace

LATENT, INPUT, EMB = 16, 64, 32


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def make_camera(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(LATENT, INPUT, generator=g) / LATENT ** 0.5
    B = torch.randn(INPUT, INPUT, generator=g) / INPUT ** 0.5
    return lambda z: torch.tanh(z @ A) @ B


def make_identities(n_id, per_id, camera, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_id, LATENT, generator=g)
    ids = torch.arange(n_id).repeat_interleave(per_id)
    quality = torch.rand(ids.numel(), generator=g) ** 0.7  # hidden capture quality in [0, 1]
    # Low quality = low contrast (the identity signal fades) plus more nuisance noise,
    # like blur / poor light: the information left in a sample shrinks with quality.
    noise = torch.randn(ids.numel(), LATENT, generator=g) * (0.3 + 0.7 * (1 - quality))[:, None]
    contrast = (0.15 + 0.85 * quality)[:, None]
    x = camera(contrast * (centres[ids] + noise)) + 0.05 * torch.randn(ids.numel(), INPUT,
                                                                       generator=g)
    return x, ids, quality


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--head", choices=["magface", "adaface"], default="magface")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    camera = make_camera()
    x_tr, y_tr, _ = make_identities(300, 24, camera, seed=1)
    # x20 output scale: MagFace clamps |f| to [10, 110] and gives no norm gradient
    # below l_a, so the embeddings must start inside that range.
    net = nn.Sequential(nn.Linear(INPUT, 128), nn.BatchNorm1d(128), nn.ReLU(),
                        nn.Linear(128, EMB), Scale(20.0))
    head = (MagFaceHead(EMB, 300, s=32, lambda_g=35) if args.head == "magface"
            else AdaFaceHead(EMB, 300, s=32))
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=3e-3)
    for step in range(args.steps):
        idx = torch.randint(0, x_tr.shape[0], (256,))
        logits, aux = head(net(x_tr[idx]), y_tr[idx])
        loss = F.cross_entropy(logits, y_tr[idx]) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    print(f"trained {args.head} in {time.time() - t0:.1f} s")

    net.eval()
    x_te, y_te, q_te = make_identities(200, 10, camera, seed=2)
    with torch.no_grad():
        emb = net(x_te)
    norms = emb.norm(dim=1)
    rho = np.corrcoef(norms.numpy(), q_te.numpy())[0, 1]
    print(f"held-out embedding norm: {norms.min():.1f}..{norms.max():.1f}, "
          f"corr(norm, true quality) = {rho:.3f}")

    fit_mask = y_te < 100  # identities 0..99 fit alpha/beta, 100..199 evaluate
    f_fit, y_fit = emb[fit_mask], y_te[fit_mask]
    i, j = torch.triu_indices(f_fit.shape[0], f_fit.shape[0], 1)
    pairs = torch.stack([i, j], 1)
    labels = (y_fit[i] == y_fit[j]).numpy()
    qm = QMagFace().fit(f_fit, pairs.numpy(), labels, threshold_space="sigmoid")
    print(f"QMagFace fit on {labels.size} pairs ({labels.sum()} genuine): "
          f"alpha = {qm.alpha:.6f}, beta = {qm.beta:.6f}")

    ev = ~fit_mask
    f_ev, y_ev = emb[ev], y_te[ev]
    probe = torch.arange(f_ev.shape[0]) % 10 < 5
    P, G = f_ev[probe], f_ev[~probe]
    cos = F.normalize(P, dim=1) @ F.normalize(G, dim=1).T
    qs = qm.score_matrix(P, G)
    fars = [1e-4, 1e-3, 1e-2, 1e-1]
    r_cos = metrics.tar_at_far(cos, y_ev[probe], y_ev[~probe], fars)
    r_q = metrics.tar_at_far(qs, y_ev[probe], y_ev[~probe], fars)
    e_cos = metrics.eer(cos, y_ev[probe], y_ev[~probe])[0]
    e_q = metrics.eer(qs, y_ev[probe], y_ev[~probe])[0]
    print(f"evaluation: {r_cos.num_genuine} genuine / {r_cos.num_impostor} impostor pairs")
    print(f"{'FAR':>8} {'TAR cosine':>11} {'TAR QMagFace':>13}")
    for far, a, b in zip(fars, r_cos.tar, r_q.tar):
        print(f"{far:8.0e} {a:11.4f} {b:13.4f}")
    print(f"{'EER':>8} {e_cos:11.4f} {e_q:13.4f}")
    print(f"total {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
