"""The custom ops of score fusion: ``qme_ext::fuse_scores`` and ``qme_ext::score_stats``.

Normalise K score matrices (z-score, min-max, RHE, raw: affine; tanh estimator)
and fold them with a rule (weighted sum, min, max, Asym-AO) in one pass: each
input element is read once and one output written, with no normalised copy in
between (docs/definitions.rst, §3). Same pattern as ``qme_ext/ops/evaluation.py``: the output is allocated
here, kernels never allocate, the CPU/CUDA twin is picked by device. The eager
PyTorch definition is :func:`qme_ext.reference.fusion.fuse_scores_ref`.
``score_stats`` gives, in one deterministic pass, the statistics the normalisers are
fitted from (reference: :func:`qme_ext.reference.fusion.score_stats_ref`).
"""
from __future__ import annotations

import torch

from .common import (DTYPE_CODES, check_vector, device_guard, matrix_descriptor, module_and_extra,
                     module_and_stream)

MAX_MODELS = 8
NORM_AFFINE, NORM_TANH = 0, 1
RULE_SUM, RULE_MIN, RULE_MAX, RULE_ASYM_AO = 0, 1, 2, 3
_OUT_DTYPES = (torch.float32, torch.float64)


def _check(scores, norm, shift, div, rule, weights, out_dtype) -> None:
    K = len(scores)
    if not 1 <= K <= MAX_MODELS:
        raise ValueError(f"scores: expected 1..{MAX_MODELS} score matrices, got {K}")
    first = scores[0]
    for k, s in enumerate(scores):
        if s.dim() != 2 or s.shape != first.shape:
            raise ValueError(f"scores[{k}]: expected shape {tuple(first.shape)} (2-D, like "
                             f"scores[0]), got {tuple(s.shape)}")
        if s.dtype not in DTYPE_CODES:
            raise TypeError(f"scores[{k}]: expected float16/bfloat16/float32/float64, got "
                            f"{s.dtype}")
        if s.device != first.device:
            raise ValueError(f"scores[{k}]: must be on the device of scores[0] ({first.device})")
    for name, seq in (("norm", norm), ("shift", shift), ("div", div)):
        if len(seq) != K:
            raise ValueError(f"{name}: expected {K} entries (one per matrix), got {len(seq)}")
    if any(c not in (NORM_AFFINE, NORM_TANH) for c in norm):
        raise ValueError(f"norm: expected codes {NORM_AFFINE} (affine) or {NORM_TANH} (tanh), "
                         f"got {list(norm)}")
    if rule not in (RULE_SUM, RULE_MIN, RULE_MAX, RULE_ASYM_AO):
        raise ValueError(f"rule: expected 0 (sum), 1 (min), 2 (max) or 3 (asym_ao), got {rule}")
    P = first.shape[0]
    if weights.dtype != torch.float64 or weights.shape not in ((K,), (P, K)):
        raise ValueError(f"weights: expected a float64 tensor of shape ({K},) or ({P}, {K}), "
                         f"got {weights.dtype} of shape {tuple(weights.shape)}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype: expected torch.float32 or torch.float64, got {out_dtype}")


@torch.library.custom_op("qme_ext::fuse_scores", mutates_args=())
def fuse_scores(
    scores: list[torch.Tensor],  # K x (P, G) raw scores, any float dtype and strides
    norm: list[int],  # (K,) NORM_AFFINE or NORM_TANH
    shift: list[float],  # (K,) affine: (s - shift) / div; tanh: mu_G
    div: list[float],  # (K,) affine divisor; tanh: sigma_G
    rule: int,  # RULE_SUM (weighted), RULE_MIN, RULE_MAX or RULE_ASYM_AO
    weights: torch.Tensor,  # (K,) or (P, K) float64; read by RULE_SUM only
    m: float,  # Asym-AO exponent
    out_dtype: torch.dtype,  # float32 or float64
) -> torch.Tensor:
    """(P, G) fused scores: the K normalised matrices folded in order (docs/definitions.rst, §3).

    NaN scores count as 0 and +-inf as +-FLT_MAX (the QME reference's ``nan_to_num``).
    Computed in float64 and rounded once to ``out_dtype``. Matrices of different
    float dtypes are promoted to a common one first (a copy of those that differ).
    """
    _check(scores, norm, shift, div, rule, weights, out_dtype)
    common = scores[0].dtype
    for s in scores[1:]:
        common = torch.promote_types(common, s.dtype)
    scores = [s if s.dtype == common else s.to(common) for s in scores]
    P, G = scores[0].shape
    dev = scores[0].device
    out = torch.empty((P, G), dtype=out_dtype, device=dev)
    if P * G == 0:
        return out
    w = weights.to(dev).contiguous()
    w_stride = 0 if w.dim() == 1 else w.stride(0)
    args = (tuple(matrix_descriptor(s) for s in scores), tuple(int(c) for c in norm),
            tuple(float(v) for v in shift), tuple(float(v) for v in div), int(rule),
            w.data_ptr(), w_stride, float(m), out.data_ptr(), DTYPE_CODES[out_dtype])
    with device_guard(scores[0]):
        mod, stream = module_and_stream(dev)
        mod.fuse_scores(args, *stream)
    return out


@fuse_scores.register_fake
def _(scores, norm, shift, div, rule, weights, m, out_dtype):
    return scores[0].new_empty(scores[0].shape, dtype=out_dtype)


# ---- score_stats --------------------------------------------------------------------
STAT_FIELDS = ("count", "mean", "m2", "min", "max")


@torch.library.custom_op("qme_ext::score_stats", mutates_args=())
def score_stats(
    scores: torch.Tensor,  # (P, G) any float dtype and strides
    q_pids: torch.Tensor,  # (P,) int64, or (0,): no genuine statistics
    g_pids: torch.Tensor,  # (G,) int64, or (0,)
) -> torch.Tensor:
    """(2, 5) float64: rows [all entries, genuine entries (q_pids[i] == g_pids[j])],
    columns STAT_FIELDS = count, mean, M2 (sum of squared deviations), min, max, of the
    scores cleaned like np.nan_to_num; one deterministic pass (docs/definitions.rst, §3). An empty set has
    count 0, mean 0, M2 0, min +inf, max -inf."""
    if scores.dim() != 2 or scores.dtype not in DTYPE_CODES:
        raise ValueError(f"scores: expected a 2-D float16/bfloat16/float32/float64 tensor, got "
                         f"{scores.dtype} of shape {tuple(scores.shape)}")
    P, G = scores.shape
    dev = scores.device
    labels = q_pids.numel() > 0 or g_pids.numel() > 0
    if labels:
        check_vector(q_pids, "q_pids", P, torch.int64, dev)
        check_vector(g_pids, "g_pids", G, torch.int64, dev)
        q_pids, g_pids = q_pids.contiguous(), g_pids.contiguous()
    out = torch.tensor([[0.0, 0.0, 0.0, float("inf"), -float("inf")]] * 2, dtype=torch.float64,
                       device=dev)
    if P * G == 0:
        return out
    args = (matrix_descriptor(scores), q_pids.data_ptr() if labels else 0,
            g_pids.data_ptr() if labels else 0, out.data_ptr())
    with device_guard(scores):
        mod, extra, _ws = module_and_extra(
            dev, lambda m: m.score_stats_workspace(matrix_descriptor(scores)))
        mod.score_stats(args, *extra)
    return out


@score_stats.register_fake
def _(scores, q_pids, g_pids):
    return scores.new_empty((2, 5), dtype=torch.float64)
