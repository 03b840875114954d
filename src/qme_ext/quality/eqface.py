"""EQFace (seeds/eqface-paper.md): explicit quality head, the quality-weighted
loss l6, the 3-step training pipeline and quality-weighted aggregation.

Qualities s are in [0, 1]; features (T, D) are frames of one subject/video.
Aggregation L2-normalises each frame before weighting (the paper's f_j are the
normalised recognition features); outputs are unit vectors.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.quality import template_aggregate


class EQFaceQualityHead(nn.Module):
    """FC-BN-ReLU-FC-sigmoid on the backbone feature (B, in_features) -> s (B,) in (0, 1)."""

    def __init__(self, in_features: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=False), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(1)


class EQFaceLoss(nn.Module):
    """l6 = -log(e^{s_i S (m1 cos(theta_y + m2) - m3)} / (same + sum_j e^{s_i S cos theta_j})).

    forward(cosine (B, C), labels (B,), quality (B,) or None for s_i = 1) -> mean loss.
    """

    def __init__(self, S: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2):
        super().__init__()
        self.S, self.m1, self.m2, self.m3 = S, m1, m2, m3

    def logits(self, cosine, labels, quality=None):
        cos = cosine.clamp(-1 + 1e-7, 1 - 1e-7)
        ct = cos.gather(1, labels[:, None]).squeeze(1)
        target = self.m1 * torch.cos(torch.acos(ct) + self.m2) - self.m3
        z = cos.scatter(1, labels[:, None], target[:, None])
        s = torch.ones_like(ct) if quality is None else quality.reshape(-1).to(cos.dtype)
        return z * (s * self.S)[:, None]

    def forward(self, cosine, labels, quality=None):
        return F.cross_entropy(self.logits(cosine, labels, quality), labels)


def freeze(module: nn.Module) -> nn.Module:
    """requires_grad False on every parameter; BatchNorm statistics are left to .eval()."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def eqface_step_params(step: int, backbone: nn.Module, head: nn.Module,
                       quality_head: nn.Module) -> list:
    """Freeze/unfreeze for pipeline step 1/2/3 and return the trainable parameters.

    1: backbone + classifier head, s_i = 1 (quality head frozen);
    2: quality head only (backbone and classifier frozen), s_i = quality output;
    3: backbone + classifier with the frozen quality head's s_i.
    """
    if step in (1, 3):
        unfreeze(backbone), unfreeze(head), freeze(quality_head)
        return list(backbone.parameters()) + list(head.parameters())
    if step == 2:
        freeze(backbone), freeze(head), unfreeze(quality_head)
        return list(quality_head.parameters())
    raise ValueError(f"step: expected 1, 2 or 3, got {step}")


def aggregate_templates(features: torch.Tensor, weights: torch.Tensor, offsets: torch.Tensor,
                        normalize: bool = True) -> torch.Tensor:
    """Batched templates (T, D) = sum w f / sum w over CSR segments, one kernel op.

    features (N, D); weights (N,); offsets (T + 1,) segment starts (any integer dtype and
    device: like the weights, they are moved to the features' device).
    """
    wd = torch.float64 if (weights.dtype == torch.float64 or features.dtype == torch.float64) \
        else torch.float32
    return template_aggregate(features, weights.to(features.device, wd),
                              torch.as_tensor(offsets).to(features.device, torch.int64),
                              normalize)[0]


def _one_segment(n: int, device) -> torch.Tensor:
    return torch.tensor([0, n], dtype=torch.int64, device=device)


def qwfa(features: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """QWFA: F = L2(sum s_j f_j / sum s_j) of L2-normalised frames (T, D) -> (D,)."""
    f = F.normalize(features.float() if features.dtype in (torch.float16, torch.bfloat16)
                    else features, dim=1)
    return aggregate_templates(f, quality, _one_segment(f.shape[0], f.device))[0]


def qwfaf(features: torch.Tensor, quality: torch.Tensor, s_th: float = 0.3) -> torch.Tensor:
    """QWFAF: if mean(s) >= s_th weight only frames with s_j >= s_th, else the plain mean."""
    q = quality.reshape(-1)
    if float(q.mean()) >= s_th:
        w = torch.where(q >= s_th, q, torch.zeros_like(q))
    else:
        w = torch.ones_like(q)
    return qwfa(features, w)


class ProgressiveAggregator:
    """Online QWFA with filter (EQFace Eq. 8-9).

    F_1 = f_1, s_sum = s_1; frame i is accepted when cos(F_{i-1}, f_i) > f_th and
    s_i > s_th: F_i = (s_sum F_{i-1} + s_i f_i)/(s_sum + s_i), s_sum += s_i. F is
    kept unnormalised (so without the filters it is exactly QWFA); ``template``
    is L2(F). Frames are L2-normalised on entry.
    """

    def __init__(self, f_th: float = 0.5, s_th: float = 0.3):
        self.f_th, self.s_th = f_th, s_th
        self.F: Optional[torch.Tensor] = None
        self.s_sum = 0.0
        self.num_accepted = 0

    def update(self, feature: torch.Tensor, quality: float) -> bool:
        """Feed one frame (D,) and its quality; returns whether it was accepted."""
        f = F.normalize(feature.reshape(-1).double(), dim=0)
        s = float(quality)
        if self.F is None:
            self.F, self.s_sum, self.num_accepted = f, s, 1
            return True
        if float(F.normalize(self.F, dim=0) @ f) > self.f_th and s > self.s_th:
            self.F = (self.s_sum * self.F + s * f) / (self.s_sum + s)
            self.s_sum += s
            self.num_accepted += 1
            return True
        return False

    @property
    def template(self) -> torch.Tensor:
        if self.F is None:
            raise RuntimeError("ProgressiveAggregator: no frame yet")
        return F.normalize(self.F, dim=0)


def qmagface_template(features: torch.Tensor):
    """Template of raw MagFace embeddings (T, D) -> (raw template (D,), quality q_T).

    The QMagFace notes define no template rule; the documented choice here:
    direction = L2(sum_k q_k f_hat_k) (= L2(sum_k f_k): each frame weighted by its
    quality q_k = |f_k|), template quality q_T = sum q_k^2 / sum q_k (the
    quality-weighted mean quality). The returned raw template q_T * direction can
    be scored with QMagFace.score_pairs / score_matrix like a single embedding.
    """
    f = features.double() if features.dtype == torch.float64 else features.float()
    q = f.norm(dim=1)
    direction = aggregate_templates(F.normalize(f, dim=1), q, _one_segment(f.shape[0], f.device))[0]
    q_t = (q * q).sum() / q.sum()
    return direction * q_t, q_t
