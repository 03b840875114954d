"""Plain-PyTorch oracle of the QME expert mixture (docs/definitions.rst, §4).

Readable and slow on purpose: the tests and benchmarks compare the fused
``qme_ext::expert_fuse`` kernel (and :class:`qme_ext.qme.QME`) against it.

    E_z(x) = Linear(rK -> 1)(Dropout(SELU(Linear(K -> rK)(BatchNorm1d(x)))))
    F      = sum_z gate[:, z] * E_z(x)

x has shape (B, K, G): B probes, K models, G gallery entries; BatchNorm1d treats
K as the channel dimension, so its statistics run over all B * G entries.
"""
from __future__ import annotations

import torch
from torch import nn


class ReferenceScoreExpert(nn.Module):
    """One score-fusion expert: (B, K, G) raw scores -> (B, G) fused score."""

    def __init__(self, num_models: int, ratio: int = 3, dropout: float = 0.1):
        super().__init__()
        hidden = ratio * num_models
        self.bn = nn.BatchNorm1d(num_models, eps=1e-5, momentum=0.1, affine=True)
        self.fc1 = nn.Linear(num_models, hidden)
        self.act = nn.SELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)                      # (B, K, G)
        h = self.fc1(y.transpose(1, 2))     # (B, G, rK)
        h = self.drop(self.act(h))
        return self.fc2(h).squeeze(-1)      # (B, G)


def reference_expert_fuse(x: torch.Tensor, gate: torch.Tensor, *experts: nn.Module) -> torch.Tensor:
    """F = sum_z gate[:, z] * E_z(x); x (B, K, G), gate (B, Z) -> (B, G)."""
    if len(experts) == 1 and isinstance(experts[0], (list, tuple, nn.ModuleList)):
        experts = tuple(experts[0])
    if gate.shape[1] != len(experts):
        raise ValueError(f"gate has {gate.shape[1]} columns for {len(experts)} experts")
    out = None
    for z, e in enumerate(experts):
        term = gate[:, z:z + 1] * e(x)
        out = term if out is None else out + term
    return out


def load_expert_state(ref: ReferenceScoreExpert, expert) -> ReferenceScoreExpert:
    """Copy the parameters and running statistics of a qme_ext ScoreExpert into ``ref``."""
    with torch.no_grad():
        ref.bn.weight.copy_(expert.weight)
        ref.bn.bias.copy_(expert.bias)
        ref.bn.running_mean.copy_(expert.running_mean)
        ref.bn.running_var.copy_(expert.running_var)
        ref.bn.num_batches_tracked.copy_(expert.num_batches_tracked)
        ref.fc1.weight.copy_(expert.fc1.weight)
        ref.fc1.bias.copy_(expert.fc1.bias)
        ref.fc2.weight.copy_(expert.fc2.weight)
        ref.fc2.bias.copy_(expert.fc2.bias)
    return ref
