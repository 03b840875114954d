""""""

from .metrics import (count_before_ref, det_ref, eer_ref, evaluate_ref, fnir_at_fpir_ref,
                      numpy_splits, qme_splits, rank_metrics_ref, roc_ref, tar_at_far_ref)
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
]
