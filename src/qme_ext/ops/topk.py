"""Custom op ``qme_ext::topk``: the k best entries of every row of a score matrix.

Same pattern as ``qme_ext/ops/evaluation.py``: outputs allocated here, kernels never
allocate, CPU/CUDA twin picked by device, raw addresses passed to pybind11.
``register_fake`` gives the output shapes so the op traces under torch.compile.
Not differentiable (a selection, like the metric ops): no autograd formula is
registered; differentiate through ``scores.gather(1, indices)`` instead.
"""
from __future__ import annotations

import torch

from .common import device_guard, matrix_descriptor, module_and_extra

MAX_K = 2048  # kTopkMaxK in csrc/include/qme/topk.h


@torch.library.custom_op("qme_ext::topk", mutates_args=())
def topk(
    scores: torch.Tensor,  # (P, G) float32/float64/float16/bfloat16, any strides
    k: int,
    largest: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (P, k) dtype of scores, indices (P, k) int64), each row best first.

    Order: descending (``largest``) or ascending score, NaN after every real score
    in both directions, -0.0 tied with +0.0, ties by lower column index.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores: expected a 2-D (P, G) matrix, got shape {tuple(scores.shape)}")
    P, G = scores.shape
    if not 1 <= k <= min(G, MAX_K):
        raise ValueError(f"k: expected 1 <= k <= min(G, {MAX_K}) = {min(G, MAX_K)}, got {k}")
    dev = scores.device
    values = torch.empty((P, k), dtype=scores.dtype, device=dev)
    indices = torch.empty((P, k), dtype=torch.int64, device=dev)
    if P == 0:
        return values, indices
    desc = matrix_descriptor(scores)
    with device_guard(scores):
        mod, extra, _ws = module_and_extra(dev,
                                           lambda m: m.topk_workspace(desc, k, bool(largest)))
        mod.topk(desc, k, bool(largest), values.data_ptr(), indices.data_ptr(), *extra)
    return values, indices


@topk.register_fake
def _(scores, k, largest):
    P = scores.shape[0]
    return scores.new_empty((P, k)), scores.new_empty((P, k), dtype=torch.int64)
