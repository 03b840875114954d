"""Eager PyTorch definition of ``qme_ext::fuse_scores`` (docs/definitions.rst, §3): the oracle of the
fused kernel and the baseline it is benchmarked against.

Each matrix becomes a float64 copy, is cleaned like ``np.nan_to_num`` (NaN -> 0,
+-inf -> +-FLT_MAX), normalised, and folded into the accumulator in model order:
one pass and one temporary per model, which is what the kernel avoids.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops.fusion import NORM_TANH, RULE_ASYM_AO, RULE_MAX, RULE_MIN, RULE_SUM
from ..fusion import asym_ao as asym_ao_ref  # the product's eager fold (one definition)

_F32_MAX = float(np.finfo(np.float32).max)


def nan_to_num_f64(s: torch.Tensor) -> torch.Tensor:
    """A float64 copy of ``s`` with the QME reference's NaN/inf replacement (done in
    float32 for lower-precision input, like ``np.nan_to_num`` on a float32 array)."""
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.dtype != torch.float64:
        s = torch.nan_to_num(s.to(torch.float32), nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)
        return s.to(torch.float64)
    return torch.nan_to_num(s, nan=0.0, posinf=_F32_MAX, neginf=-_F32_MAX)


def normalise_ref(s: torch.Tensor, norm: int, shift: float, div: float) -> torch.Tensor:
    """(s - shift) / div, or 0.5 (tanh(0.01 (s - shift) / div) + 1) for the tanh estimator."""
    z = nan_to_num_f64(s).sub_(shift).div_(div)
    return z.mul_(0.01).tanh_().add_(1.0).mul_(0.5) if norm == NORM_TANH else z


def fuse_scores_ref(scores, norm, shift, div, rule: int, weights, m: float = 2.0,
                    out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(P, G) fused scores of the K (P, G) matrices ``scores``; arguments as the op's."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    acc = None
    for k, s in enumerate(scores):
        z = normalise_ref(torch.as_tensor(s), norm[k], shift[k], div[k])
        if rule == RULE_ASYM_AO:
            acc = z.clamp_(0.0, 1.0) if acc is None else asym_ao_ref(acc, z, m)
        elif rule in (RULE_MIN, RULE_MAX):
            op = torch.minimum if rule == RULE_MIN else torch.maximum
            acc = z if acc is None else op(acc, z, out=acc)
        elif rule == RULE_SUM:
            wk = w[..., k].to(z.device)
            z.mul_(wk if wk.dim() == 0 else wk[:, None])
            acc = z if acc is None else acc.add_(z)
        else:
            raise ValueError(f"rule: unknown code {rule}")
    return acc.to(out_dtype)


def score_stats_ref(scores, q_pids=None, g_pids=None) -> torch.Tensor:
    """(2, 5) float64 [all, genuine] x [count, mean, M2, min, max] of the cleaned scores,
    by a boolean P x G mask and torch reductions (what the kernel avoids)."""
    s = nan_to_num_f64(torch.as_tensor(scores))
    rows = []
    sets = [s.reshape(-1)]
    if q_pids is not None:
        mask = torch.as_tensor(q_pids)[:, None] == torch.as_tensor(g_pids)[None, :]
        sets.append(s[mask.to(s.device)])
    for v in sets:
        if v.numel() == 0:
            rows.append([0.0, 0.0, 0.0, float("inf"), -float("inf")])
        else:
            mean = v.mean()
            rows.append([float(v.numel()), float(mean), float(((v - mean) ** 2).sum()),
                         float(v.min()), float(v.max())])
    if len(rows) == 1:
        rows.append([0.0, 0.0, 0.0, float("inf"), -float("inf")])
    return torch.tensor(rows, dtype=torch.float64)
