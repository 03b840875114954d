"""The test oracle: literal numpy/PyTorch definitions of every op and metric (sorts,
loops, the QME reference's formulas), which the tests compare the product against.

Layer: above every product layer but ``cli``; it may import the product (the enrolment
splits and the eager Asym-AO fold are defined there once) and the product never imports
it (``tests/test_layers.py``)."""

from .metrics import (count_before_ref, det_ref, eer_ref, evaluate_ref, fnir_at_fpir_ref,
                      numpy_splits, qme_splits, rank_metrics_ref, roc_ref, tar_at_far_ref)
from .rerank import average_query_expansion_ref, k_reciprocal_ref
from .topk import topk_ref

__all__ = [
    "count_before_ref",
    "rank_metrics_ref",
    "tar_at_far_ref",
    "qme_splits",
    "numpy_splits",
    "fnir_at_fpir_ref",
    "roc_ref",
    "det_ref",
    "eer_ref",
    "evaluate_ref",
    "topk_ref",
    "k_reciprocal_ref",
    "average_query_expansion_ref",
]
