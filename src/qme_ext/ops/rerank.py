"""Custom op ``qme_ext::rerank_jaccard``: the sparse Jaccard accumulation of k-reciprocal
re-ranking (``csrc/include/qme/rerank_jaccard.h``), CPU and CUDA twins.

Outputs are allocated here (kernels never allocate); the CSR lists are validated here,
before a kernel reads them, so a bad index raises a ValueError instead of reading out of
bounds. Not differentiable (re-ranking is a post-processing of scores).
"""
from __future__ import annotations

import torch

from .common import check_row_csr, device_guard, module_and_stream


def _check_csr(rows: int, offsets_name: str, offsets, idx_name: str, idx, vals_name: str, vals,
               bound: int, device) -> None:
    # check_row_csr reads only the row count and device of its first argument
    check_row_csr(torch.empty((rows, 0), device=device), offsets_name, offsets,
                  ((idx_name, idx, torch.int64), (vals_name, vals, torch.float64)))
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= bound):
        raise ValueError(f"{idx_name}: expected indices in [0, {bound}), got "
                         f"[{int(idx.min())}, {int(idx.max())}]")


@torch.library.custom_op("qme_ext::rerank_jaccard", mutates_args=())
def rerank_jaccard(
    probe_offsets: torch.Tensor,  # (P + 1,) int64 CSR offsets of the probe encodings
    probe_cols: torch.Tensor,  # (nnz_p,) int64 columns in [0, N), ascending per row
    probe_vals: torch.Tensor,  # (nnz_p,) float64
    inv_offsets: torch.Tensor,  # (N + 1,) int64 CSR offsets of the inverted lists
    inv_rows: torch.Tensor,  # (nnz_g,) int64 gallery rows in [0, G), ascending per list
    inv_vals: torch.Tensor,  # (nnz_g,) float64
    num_gallery: int,
) -> torch.Tensor:
    """(P, G) float64: out[p, g] = sum over the probe's columns k (ascending) of
    min(V_p[k], V_g[k]), the gallery values read from the inverted list of k."""
    dev = probe_offsets.device
    P = probe_offsets.shape[0] - 1 if probe_offsets.dim() == 1 else -1
    N = inv_offsets.shape[0] - 1 if inv_offsets.dim() == 1 else -1
    if P < 0 or N < 0:
        raise ValueError("probe_offsets, inv_offsets: expected 1-D int64 tensors of >= 1 entry")
    if num_gallery < 0:
        raise ValueError(f"num_gallery: expected >= 0, got {num_gallery}")
    _check_csr(P, "probe_offsets", probe_offsets, "probe_cols", probe_cols, "probe_vals",
               probe_vals, N, dev)
    _check_csr(N, "inv_offsets", inv_offsets, "inv_rows", inv_rows, "inv_vals", inv_vals,
               max(num_gallery, 0), dev)
    out = torch.empty((P, num_gallery), dtype=torch.float64, device=dev)
    if P == 0 or num_gallery == 0:
        return out
    ts = [t.contiguous() for t in (probe_offsets, probe_cols, probe_vals, inv_offsets, inv_rows,
                                   inv_vals)]
    with device_guard(out):
        mod, extra = module_and_stream(dev)
        mod.rerank_jaccard((P, num_gallery, N, *(t.data_ptr() for t in ts), out.data_ptr()),
                           *extra)
    return out


@rerank_jaccard.register_fake
def _(probe_offsets, probe_cols, probe_vals, inv_offsets, inv_rows, inv_vals, num_gallery):
    return probe_vals.new_empty((probe_offsets.shape[0] - 1, num_gallery))
