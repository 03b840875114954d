"""QME networks (docs/definitions.rst, §4): the quality estimator, the score experts and the mixture.

* :class:`QualityEstimator` maps quality features of a probe to q in [0, 1].
* :class:`ScoreExpert` is one learned score fusion: BatchNorm over the K model
  channels (statistics over all B * G entries), then per entry Linear(K -> rK),
  SELU, Dropout, Linear(rK -> 1). Its BatchNorm parameters and buffers carry
  nn.BatchNorm1d's names (``weight``, ``bias``, ``running_mean``, ``running_var``,
  ``num_batches_tracked``), so state dicts read like a BatchNorm1d's.
* :class:`QME` mixes Z experts with a gate g(q) on the simplex:
  F = sum_z g_z(q) * E_z(X). All experts run in one ``qme_ext::expert_fuse`` kernel
  call (one read of X, one write of F); ``use_kernel=False`` runs the same maths
  in plain PyTorch for comparison.

Gate: Z = 2 gives exactly (q, 1 - q) for (E_1, E_2), the paper's
F = q * E_1 + (1 - q) * E_2. Z >= 3 uses piecewise-linear "hat" functions on
[0, 1]: expert z (0-based) is centred at 1 - z / (Z - 1) with half-width
1 / (Z - 1), so at most two neighbouring experts are active and the weights sum to
1 (Z = 2 is the same family). Z = 1 gives weight 1: the no-quality ablation, in
which q is ignored (and may be None).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.qme import MAX_CHANNELS, compute_dtype, expert_fuse

_SEED_LIMIT = 1 << 62


class QualityEstimator(nn.Module):
    """Quality features (B, D) or per-frame (B, T, D) -> q (B,) in [0, 1].

    Linear(D -> hidden) -> ReLU -> Dropout -> Linear(hidden -> mid) -> Dropout ->
    Linear(mid -> 1) -> sigmoid, hidden = D // 2 by default. Weights are
    trunc-normal (std 0.02), biases 0. Per-frame input: q of every frame whose
    features are not all zero, averaged over those frames. A probe (or frame)
    whose features are all zero has no face: q = 0 exactly.
    """

    def __init__(self, in_dim: int, hidden: Optional[int] = None, mid: int = 512,
                 dropout: float = 0.1):
        super().__init__()
        hidden = int(hidden) if hidden else max(1, int(in_dim) // 2)
        self.in_dim, self.hidden, self.mid, self.dropout = int(in_dim), hidden, int(mid), dropout
        self.fc1 = nn.Linear(self.in_dim, hidden)
        self.fc2 = nn.Linear(hidden, self.mid)
        self.fc3 = nn.Linear(self.mid, 1)
        self.drop = nn.Dropout(dropout)
        for m in (self.fc1, self.fc2, self.fc3):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def _frame_q(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.fc1(x)))
        h = self.drop(self.fc2(h))
        return torch.sigmoid(self.fc3(h)).squeeze(-1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() not in (2, 3) or feats.shape[-1] != self.in_dim:
            raise ValueError(f"quality features: expected (B, {self.in_dim}) or "
                             f"(B, T, {self.in_dim}), got {tuple(feats.shape)}")
        x = feats.to(self.fc1.weight.dtype)
        has_face = (x != 0).any(dim=-1)
        q = torch.where(has_face, self._frame_q(x), torch.zeros((), dtype=x.dtype,
                                                                 device=x.device))
        if x.dim() == 3:
            n = has_face.sum(dim=1)
            q = q.sum(dim=1) / n.clamp(min=1).to(q.dtype)  # all-zero probe: 0 / 1 = 0
        return q


class ScoreExpert(nn.Module):
    """One score-fusion expert; ``forward`` (B, K, G) -> (B, G) in plain PyTorch."""

    def __init__(self, num_models: int, ratio: int = 3, dropout: float = 0.1,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        K = int(num_models)
        self.num_models, self.ratio, self.dropout = K, int(ratio), float(dropout)
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(K))
        self.bias = nn.Parameter(torch.zeros(K))
        self.register_buffer("running_mean", torch.zeros(K))
        self.register_buffer("running_var", torch.ones(K))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.fc1 = nn.Linear(K, self.ratio * K)
        self.fc2 = nn.Linear(self.ratio * K, 1)

    @property
    def hidden(self) -> int:
        return self.fc1.out_features

    def folded_affine(self, mean: torch.Tensor, var: torch.Tensor):
        """BatchNorm as y = a * x + c per channel, given the statistics to normalise with."""
        a = self.weight.to(var.dtype) * torch.rsqrt(var + self.eps)
        return a, self.bias.to(var.dtype) - mean * a

    def update_running_stats(self, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_(var_unbiased.detach().to(self.running_var.dtype),
                                              alpha=m)
            self.num_batches_tracked.add_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.to(compute_dtype(x.dtype))
        if self.training:
            mean, var, var_u = batch_stats(xs)
            self.update_running_stats(mean, var_u)
        else:
            mean, var = self.running_mean.to(xs.dtype), self.running_var.to(xs.dtype)
        a, c = self.folded_affine(mean, var)
        return _expert_torch(xs, a, c, self.fc1, self.fc2, self.dropout, self.training)


def batch_stats(xs: torch.Tensor):
    """Per-channel mean, biased and unbiased variance of (B, K, G) over B and G."""
    var, mean = torch.var_mean(xs, dim=(0, 2), unbiased=False)
    n = xs.shape[0] * xs.shape[2]
    var_u = var * (n / max(n - 1, 1))
    return mean, var, var_u


def _expert_torch(xs, a, c, fc1, fc2, p, training):
    """Plain-PyTorch expert on already folded BatchNorm: (B, K, G) -> (B, G)."""
    y = (xs * a[None, :, None] + c[None, :, None]).transpose(1, 2)  # (B, G, K)
    h = F.selu(F.linear(y, fc1.weight.to(y.dtype), fc1.bias.to(y.dtype)))
    h = F.dropout(h, p, training)
    return F.linear(h, fc2.weight.to(y.dtype), fc2.bias.to(y.dtype)).squeeze(-1)


def gate_weights(q: Optional[torch.Tensor], num_experts: int, batch: int,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(B, Z) mixture weights for quality q (B,); see the module docstring."""
    Z = int(num_experts)
    if device is None and isinstance(q, torch.Tensor):
        device = q.device  # every Z alike: the weights live where q does unless told
    if Z == 1:
        return torch.ones((batch, 1), dtype=dtype, device=device)
    if q is None:
        raise ValueError(f"QME with {Z} experts needs the probe quality q")
    # on the scores' device: a CPU q with CUDA scores is a natural call (q comes from numpy)
    q = torch.as_tensor(q).reshape(-1).to(device=device, dtype=dtype).clamp(0.0, 1.0)
    if q.shape[0] != batch:
        raise ValueError(f"q: expected {batch} values, got {q.shape[0]}")
    if Z == 2:
        return torch.stack([q, 1.0 - q], dim=1)  # exactly the paper's (q, 1 - q)
    centres = 1.0 - torch.arange(Z, dtype=dtype, device=q.device) / (Z - 1)
    return torch.relu(1.0 - (q[:, None] - centres[None, :]).abs() * (Z - 1))


class QME(nn.Module):
    """Quality-guided mixture of Z score-fusion experts.

    ``forward(scores, q)``: scores (B, K, G) raw scores of the K ``models`` (in that
    channel order), q (B,) probe quality -> fused (B, G), float32 (float64 for
    float64 scores). Training mode normalises with the batch statistics and updates
    every expert's running statistics (momentum 0.1, unbiased variance), like
    nn.BatchNorm1d; eval mode uses the running statistics.
    """

    def __init__(self, models: Sequence[str], num_experts: int = 2, ratio: int = 3,
                 dropout: float = 0.1, use_kernel: bool = True):
        super().__init__()
        if isinstance(models, str):
            models = [models]
        self.models = list(models)
        if not self.models:
            raise ValueError("QME needs at least one model")
        if int(num_experts) < 1:
            raise ValueError(f"num_experts: expected >= 1, got {num_experts}")
        self.num_experts, self.ratio, self.dropout = int(num_experts), int(ratio), float(dropout)
        self.use_kernel = bool(use_kernel)
        K = len(self.models)
        self.experts = nn.ModuleList(ScoreExpert(K, ratio, dropout)
                                     for _ in range(self.num_experts))

    def gate(self, q: Optional[torch.Tensor], batch: int, dtype=torch.float32, device=None):
        return gate_weights(q, self.num_experts, batch, dtype, device)

    def _folded(self, xs: torch.Tensor):
        """(a, c) of every expert, (Z, K) each; updates running stats in training mode."""
        if self.training:
            mean, var, var_u = batch_stats(xs)
            for e in self.experts:
                e.update_running_stats(mean, var_u)
            pairs = [e.folded_affine(mean, var) for e in self.experts]
        else:
            pairs = [e.folded_affine(e.running_mean.to(xs.dtype), e.running_var.to(xs.dtype))
                     for e in self.experts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def as_predictor(self):
        """This model as a :class:`qme_ext.qme.Predictor` (its imputation, offsets and scale
        applied): the one inference path that the engine's fusion call site asks a bare QME
        for (the metrics layer below does not import qme)."""
        from .predictor import Predictor
        return Predictor.from_qme(self)

    def forward(self, scores: torch.Tensor, q: Optional[torch.Tensor] = None) -> torch.Tensor:
        if scores.dim() != 3 or scores.shape[1] != len(self.models):
            raise ValueError(f"scores: expected (B, {len(self.models)}, G), got "
                             f"{tuple(scores.shape)}")
        B, K, _ = scores.shape
        ct = compute_dtype(scores.dtype)
        gate = self.gate(q, B, ct, scores.device)
        p = self.dropout if self.training else 0.0
        kernel = (self.use_kernel and K <= MAX_CHANNELS
                  and scores.device.type in ("cpu", "cuda"))
        if kernel:
            # The statistics are one extra torch pass over X (in the autograd graph,
            # so the BatchNorm gradient through mean/var comes for free); the kernel
            # then reads X once for all experts.
            a, c = self._folded(scores if scores.dtype == ct else scores.to(ct))
            ex = self.experts
            w1 = torch.stack([e.fc1.weight for e in ex]).to(ct)
            b1 = torch.stack([e.fc1.bias for e in ex]).to(ct)
            w2 = torch.stack([e.fc2.weight[0] for e in ex]).to(ct)
            b2 = torch.stack([e.fc2.bias[0] for e in ex]).to(ct)
            seed = 0
            if p > 0.0:
                seed = int(torch.randint(0, _SEED_LIMIT, (1,)).item())
            return expert_fuse(scores, a, c, w1, b1, w2, b2, gate, p, seed)
        xs = scores.to(ct)
        a, c = self._folded(xs)
        out = None
        for z, e in enumerate(self.experts):
            term = gate[:, z:z + 1] * _expert_torch(xs, a[z], c[z], e.fc1, e.fc2, p, self.training)
            out = term if out is None else out + term
        return out

    def extra_repr(self) -> str:
        return (f"models={self.models}, num_experts={self.num_experts}, ratio={self.ratio}, "
                f"dropout={self.dropout}, use_kernel={self.use_kernel}")
