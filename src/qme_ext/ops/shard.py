"""The custom op of sharded ranking: ``qme_ext::count_before``.

For a (P, G) column shard of a gallery and, per probe row, a few queries given
as (order-preserving key, global column): how many entries of the row rank
before each query (higher key, or equal key and lower global column). Summed
over the column shards of a gallery it is the query's global rank, which is
what Rank-k/mAP of a column-sharded score matrix needs (qme_ext.distributed).
Same pattern as ``qme_ext/ops/evaluation.py``: outputs allocated here, kernels never
allocate, CPU/CUDA twin picked by device, raw addresses passed to pybind11.
"""
from __future__ import annotations

import torch

from .common import check_row_csr, device_guard, matrix_descriptor, module_and_extra


def _check(scores, col_offset, query_offsets, query_keys, query_cols):
    # The CUDA twin cannot throw from a kernel: everything it would index with is
    # checked here, before any pointer is used.
    nq, longest = check_row_csr(scores, "query_offsets", query_offsets,
                                (("query_keys", query_keys, torch.int64),
                                 ("query_cols", query_cols, torch.int64)))
    if col_offset < 0:
        raise ValueError(f"col_offset: expected >= 0, got {col_offset}")
    if nq and scores.dtype != torch.float64:
        if int(query_cols.min()) < 0 or int(query_cols.max()) >= 1 << 32:
            raise ValueError("query_cols: global columns must lie in [0, 2^32) for 32-bit keys")
        if bool(((query_keys >> 32) != 0).any()):
            raise ValueError("query_keys: expected 32-bit keys for a "
                             f"{scores.dtype} score matrix")
    elif nq and int(query_cols.min()) < 0:
        raise ValueError("query_cols: global columns must be >= 0")
    return longest


@torch.library.custom_op("qme_ext::count_before", mutates_args=())
def count_before(
    scores: torch.Tensor,  # (P, G) column shard, float32/float64/float16/bfloat16
    col_offset: int,  # global column of local column 0
    query_offsets: torch.Tensor,  # (P + 1,) int64 CSR offsets of the queries per row
    query_keys: torch.Tensor,  # (nq,) int64 bit patterns of the queries' keys (qme_ext.ops.keys)
    query_cols: torch.Tensor,  # (nq,) int64 global columns of the queries
) -> torch.Tensor:
    """(nq,) int64: entries of the query's row ranked before the query.

    Keys are 32-bit for float16/bfloat16/float32 scores (of the widened float32
    value), 64-bit for float64, as :mod:`qme_ext.ops.keys` computes them.
    """
    counts = torch.zeros(query_keys.shape[0], dtype=torch.int64, device=scores.device)
    if scores.shape[0] == 0 or query_keys.shape[0] == 0:
        return counts
    max_q = _check(scores, col_offset, query_offsets, query_keys, query_cols)
    query_offsets, query_keys, query_cols = (t.contiguous() for t in
                                             (query_offsets, query_keys, query_cols))
    desc = matrix_descriptor(scores)
    with device_guard(scores):
        mod, extra, _ws = module_and_extra(
            scores.device, lambda m: m.count_before_workspace(desc, int(col_offset), max_q))
        mod.count_before(desc, int(col_offset), query_offsets.data_ptr(), query_keys.data_ptr(),
                         query_cols.data_ptr(), max_q, counts.data_ptr(), *extra)
    return counts


@count_before.register_fake
def _(scores, col_offset, query_offsets, query_keys, query_cols):
    return scores.new_empty(query_keys.shape, dtype=torch.int64)
