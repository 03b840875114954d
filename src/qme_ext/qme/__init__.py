"""QME: quality-guided mixture of score-fusion experts (ICCV 2025), docs/definitions.rst, §4.

Modules (``modules``), losses (``losses``), training (``train``) and checkpoints
(``checkpoint``) live in their own files; names are imported on first use.

Layer: above ``metrics`` (training validates with it), ``ops`` (the fused expert op),
``io`` and ``top_k``; below ``reference`` and ``cli``.
"""
import importlib

_EXPORTS = {
    "QualityEstimator": "modules",
    "ScoreExpert": "modules",
    "QME": "modules",
    "pseudo_quality_loss": "losses",
    "score_triplet_loss": "losses",
    "fit_quality_estimator": "train",
    "fit_qme": "train",
    "TrainConfig": "train",
    "predict": "train",
    "fuse_scoreset": "train",
    "search": "fused_search",  # not "search": a submodule named like the function would shadow it
    "Predictor": "predictor",   # issue 26: the one inference path
    "Fuser": "predictor",
    "fit_predictor": "selection",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_predictor": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'qme_ext.qme' has no attribute {name!r}")
