"""Quality-aware face recognition (docs/definitions.rst, §5): QMagFace scoring, MagFace/AdaFace
heads, EQFace quality head, loss and aggregation, QAFace injection.

Layer: directly above ``qme_ext.ops`` (the QMagFace epilogue and template aggregation
ops); imports nothing else of qme_ext.
"""
from .eqface import (EQFaceLoss, EQFaceQualityHead, ProgressiveAggregator, aggregate_templates,
                     eqface_step_params, freeze, qmagface_template, qwfa, qwfaf, unfreeze)
from .margins import AdaFaceHead, MagFaceHead, magface_margin, magface_regularizer
from .qaface import QAFaceInjection
from .qmagface import PUBLISHED, QMagFace, fit_line, operating_points, pair_cosine_quality

__all__ = [
    "QMagFace", "PUBLISHED", "fit_line", "operating_points", "pair_cosine_quality",
    "MagFaceHead", "AdaFaceHead", "magface_margin", "magface_regularizer",
    "EQFaceQualityHead", "EQFaceLoss", "freeze", "unfreeze", "eqface_step_params",
    "qwfa", "qwfaf", "ProgressiveAggregator", "qmagface_template", "aggregate_templates",
    "QAFaceInjection",
]
