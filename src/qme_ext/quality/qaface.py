"""QAFace quality-aware feature injection (seeds/qaface-paper.md, docs/definitions.rst, §5).

No public code exists; choices made here (all exposed as parameters):
* n_hat = (|x| - mu) / sigma with mu, sigma EMAs of the batch mean / std of the
  feature norms. ``ema`` is the weight of the *previous* running value
  (mu <- ema*mu + (1-ema)*batch_mean; the paper's Eq. 8-9 are garbled, its
  alpha = 0.99 only makes sense as this momentum). The first batch initialises.
* f(n_hat) = exp(-n_hat) if n_hat >= -tau else 0 (Eq. 11), tau default 2 (paper).
* memory M (C, D): ``mode="replace"`` (default, VPL-style: M_y is the batch mean
  of f * x/|x| of class y's latest injected samples, entries older than
  ``max_age`` updates are ignored); ``mode="accumulate"`` adds (Eq. 7 literally).
* centres(W) = W + lam * M (M carries no gradient), usable with any margin head.
* x should come from a momentum (MoCo) encoder; that encoder is the caller's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class QAFaceInjection(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, tau: float = 2.0, ema: float = 0.99,
                 lam: float = 0.15, mode: str = "replace", max_age: Optional[int] = None):
        super().__init__()
        if mode not in ("replace", "accumulate"):
            raise ValueError("mode: expected 'replace' or 'accumulate'")
        self.tau, self.ema, self.lam, self.mode, self.max_age = tau, ema, lam, mode, max_age
        self.register_buffer("memory", torch.zeros(num_classes, feature_dim))
        self.register_buffer("age", torch.full((num_classes,), -1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mu", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sigma", torch.ones((), dtype=torch.float64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update_stats(self, norms: torch.Tensor) -> None:
        m = norms.double().mean()
        s = norms.double().std() if norms.numel() > 1 else torch.zeros_like(m)
        if not bool(self.initialized):
            self.mu.copy_(m), self.sigma.copy_(s), self.initialized.fill_(True)
        else:
            self.mu.copy_(self.ema * self.mu + (1 - self.ema) * m)
            self.sigma.copy_(self.ema * self.sigma + (1 - self.ema) * s)

    def injection_weight(self, norms: torch.Tensor) -> torch.Tensor:
        """f(n_hat) (B,) for feature norms (B,) with the current statistics."""
        n_hat = (norms.double() - self.mu) / self.sigma.clamp_min(1e-12)
        return torch.where(n_hat >= -self.tau, torch.exp(-n_hat), torch.zeros_like(n_hat))

    @torch.no_grad()
    def inject(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Update statistics, then memorise f(n_hat) * x/|x| per class; returns the weights."""
        norms = x.detach().norm(dim=1)
        self.update_stats(norms)
        w = self.injection_weight(norms)
        contrib = (w[:, None] * F.normalize(x.detach().double(), dim=1)).to(self.memory.dtype)
        self.step += 1
        if self.mode == "accumulate":
            self.memory.index_add_(0, labels, contrib)
        else:
            C = self.memory.shape[0]
            sums = torch.zeros_like(self.memory).index_add_(0, labels, contrib)
            cnt = torch.bincount(labels, minlength=C)
            hit = cnt > 0
            self.memory[hit] = sums[hit] / cnt[hit, None].to(sums.dtype)
        self.age[torch.unique(labels)] = self.step
        return w

    def centres(self, base_weight: torch.Tensor) -> torch.Tensor:
        """base_weight (C, D) + lam * memory (stale entries masked out when max_age is set)."""
        mem = self.memory
        if self.max_age is not None:
            fresh = (self.age >= 0) & (self.step - self.age <= self.max_age)
            mem = mem * fresh[:, None].to(mem.dtype)
        return base_weight + self.lam * mem.to(base_weight.dtype)
