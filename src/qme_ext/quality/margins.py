"""Quality-aware margin heads (docs/definitions.rst, §5): MagFace and AdaFace.

Both return ``(logits, aux_loss)``; the training loss is
``cross_entropy(logits, labels) + aux_loss`` (aux_loss is 0 for AdaFace).
Feature norms are unitless; angles in radians.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_EPS = 1e-7  # keeps acos / sqrt away from their infinite slopes at |cos| = 1


def _cosine(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C) cosines between features (B, D) and class centres weight (C, D)."""
    return F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T


def magface_margin(a, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8):
    """m(a) = (u_m - l_m)/(u_a - l_a) * (a - l_a) + l_m (a already clamped)."""
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_regularizer(a, u_a=110.0):
    """g(a) = 1/a + a/u_a^2."""
    return 1.0 / a + a / (u_a * u_a)


class MagFaceHead(nn.Module):
    """MagFace classifier head: logits (B, C) and aux loss lambda_g * mean g(a).

    a = clamp(|x|, l_a, u_a); target logit s*cos(theta_y + m(a)) ("arcface") or
    s*(cos theta_y - m(a)) ("cosface"); other logits s*cos theta_j.
    Without ``easy_margin`` the ArcFace fallback cos - m sin(m) is used where
    theta_y + m(a) > pi (keeps the target logit monotone in theta).
    """

    def __init__(self, in_features, num_classes, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45,
                 u_m=0.8, lambda_g=35.0, easy_margin=False, variant="arcface"):
        super().__init__()
        if variant not in ("arcface", "cosface"):
            raise ValueError("variant: expected 'arcface' or 'cosface'")
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.l_a, self.u_a, self.l_m, self.u_m = s, l_a, u_a, l_m, u_m
        self.lambda_g, self.easy_margin, self.variant = lambda_g, easy_margin, variant

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        a = features.norm(dim=1).clamp(self.l_a, self.u_a)
        m = magface_margin(a, self.l_a, self.u_a, self.l_m, self.u_m)
        cos = _cosine(features, self.weight.to(features.dtype)).clamp(-1 + _EPS, 1 - _EPS)
        ct = cos.gather(1, labels[:, None]).squeeze(1)
        if self.variant == "cosface":
            target = ct - m
        else:
            st = torch.sqrt(1.0 - ct * ct)
            target = ct * torch.cos(m) - st * torch.sin(m)
            if self.easy_margin:
                target = torch.where(ct > 0, target, ct)
            else:
                th = torch.cos(math.pi - m)
                target = torch.where(ct > th, target, ct - torch.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], target[:, None]) * self.s
        aux = self.lambda_g * magface_regularizer(a, self.u_a).mean()
        return logits, aux


class AdaFaceHead(nn.Module):
    """AdaFace head: norm-adaptive angular + additive margin (docs/definitions.rst, §5).

    Buffers ``batch_mean`` (init 20) and ``batch_std`` (init 100) are EMAs
    (factor t_alpha) of the batch mean / unbiased std of clip(|z|, 0.001, 100),
    updated in training mode before use.
    """

    def __init__(self, in_features, num_classes, m=0.4, h=0.333, s=64.0, t_alpha=0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.m, self.h, self.s, self.t_alpha = m, h, s, t_alpha
        self.register_buffer("batch_mean", torch.tensor(20.0, dtype=torch.float64))
        self.register_buffer("batch_std", torch.tensor(100.0, dtype=torch.float64))

    def margin_scaler(self, features: torch.Tensor) -> torch.Tensor:
        """z_hat (B,) in [-1, 1]; updates the EMA buffers first in training mode."""
        n = features.detach().norm(dim=1).clamp(0.001, 100)
        if self.training:
            with torch.no_grad():
                a = self.t_alpha
                std = n.std() if n.numel() > 1 else torch.zeros((), dtype=n.dtype)
                self.batch_mean.copy_(a * n.mean().double() + (1 - a) * self.batch_mean)
                self.batch_std.copy_(a * std.double() + (1 - a) * self.batch_std)
        mu, sd = self.batch_mean.to(n.dtype), self.batch_std.to(n.dtype)
        return ((n - mu) / (sd + 1e-3) * self.h).clamp(-1, 1)

    def target_logit(self, cos_target: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """s * (cos(clip(theta_y - m z, eps, pi - eps)) - (m + m z))."""
        theta = torch.acos(cos_target.clamp(-1 + _EPS, 1 - _EPS))
        theta = (theta - self.m * z_hat).clamp(_EPS, math.pi - _EPS)
        return self.s * (torch.cos(theta) - (self.m + self.m * z_hat))

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        z = self.margin_scaler(features)
        cos = _cosine(features, self.weight.to(features.dtype)).clamp(-1 + _EPS, 1 - _EPS)
        ct = cos.gather(1, labels[:, None]).squeeze(1)
        logits = (cos * self.s).scatter(1, labels[:, None], self.target_logit(ct, z)[:, None])
        return logits, features.new_zeros(())
