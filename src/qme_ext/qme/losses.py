"""QME training losses (docs/definitions.rst, §4), vectorised and sort-free."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def best_genuine_rank(scores: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor) -> torch.Tensor:
    """1-based rank of each probe's best genuine entry; N when it has none.

    scores (B, N), q_pids (B,), g_pids (N,) -> (B,) int64. Order: higher score
    first, ties by lower column index, so the rank is 1 + the number of entries
    ranked before the best genuine one (counted, not sorted).
    """
    S = scores.detach()
    B, N = S.shape
    genuine = q_pids.reshape(-1, 1).to(S.device) == g_pids.reshape(1, -1).to(S.device)
    has = genuine.any(dim=1)
    neg_inf = torch.tensor(float("-inf"), dtype=S.dtype, device=S.device)
    best = torch.where(genuine, S, neg_inf).amax(dim=1, keepdim=True)  # (B, 1)
    # First genuine column reaching the best score (argmax returns the first maximum).
    at_best = genuine & (S == best)
    j = at_best.to(torch.uint8).argmax(dim=1, keepdim=True)
    cols = torch.arange(N, device=S.device).reshape(1, -1)
    before = (S > best) | ((S == best) & (cols < j))
    r = before.sum(dim=1) + 1
    return torch.where(has, r, torch.full_like(r, N))


def pseudo_quality_loss(q: torch.Tensor, face_scores: torch.Tensor, q_pids: torch.Tensor,
                        g_pids: torch.Tensor, rank_threshold: float = 3) -> torch.Tensor:
    """MSE between q (B,) and the pseudo quality ReLU((delta - r) / (delta - 1)).

    r is the rank of the best genuine training centre in the face model's scores
    (B, N); delta = ``rank_threshold`` > 1 (delta = 10: r = 1, 5, 20 give 1, 0.556, 0).
    """
    delta = float(rank_threshold)
    if not delta > 1.0:
        raise ValueError(f"rank_threshold: expected > 1, got {rank_threshold}")
    face_scores = torch.as_tensor(face_scores)
    r = best_genuine_rank(face_scores, torch.as_tensor(q_pids), torch.as_tensor(g_pids))
    target = torch.relu((delta - r.to(torch.float64)) / (delta - 1.0))
    q = q.reshape(-1)
    return F.mse_loss(q, target.to(device=q.device, dtype=q.dtype))


def score_triplet_loss(fused: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                       margin: float = 1.0) -> torch.Tensor:
    """mean over impostor entries of ReLU(F) + mean over genuine entries of ReLU(m - F).

    fused (B, N); an empty set contributes 0. Masked sums instead of boolean
    indexing keep the shapes static (torch.compile friendly).
    """
    dev = fused.device
    genuine = (torch.as_tensor(q_pids).to(dev).reshape(-1, 1) ==
               torch.as_tensor(g_pids).to(dev).reshape(1, -1)).to(fused.dtype)
    impostor = 1.0 - genuine
    l_imp = (torch.relu(fused) * impostor).sum() / impostor.sum().clamp(min=1.0)
    l_gen = (torch.relu(margin - fused) * genuine).sum() / genuine.sum().clamp(min=1.0)
    return l_imp + l_gen
