"""QME checkpoints: both networks, the model order and the training configuration in one file.

File content (``torch.save`` of a plain dict, loadable with ``weights_only=True``)::

    format        "qme_ext.qme/1"
    models        list[str], the channel order the experts were trained with
    qme_args      dict(num_experts, ratio, dropout)          -> QME(models, **qme_args)
    qme_state     QME state_dict (experts incl. BatchNorm running statistics)
    qe_args       dict(in_dim, hidden, mid, dropout) or None -> QualityEstimator(**qe_args)
    qe_state      QualityEstimator state_dict or None (no-QE ablation)
    quality       dict(name, dim): the quality feature group ``quality/{name}`` (P, dim)
    config        TrainConfig as a dict
    extra         free dict (training state for resume: optimiser, scheduler, step, ...;
                  ``open_set``: the absent-modality rule and per-stratum offsets that
                  ``predict`` applies, ``safety_net``: whether a warm start was kept)

Writes are atomic (:func:`qme_ext.io.write_atomic`: the file is serialised in memory, written
to a temporary in the destination directory, then renamed), so an interrupted save or a full
disk never leaves a truncated checkpoint under the final name.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

import torch

from ..io import write_atomic
from .checkpoint_schema import FORMAT, CheckpointError, check_payload
from .finite import require_finite_weights

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT"]


def _qme_args(model) -> dict:
    args = getattr(model, "_qme_args", None)
    if args is not None:
        return dict(args)
    return {"num_experts": int(getattr(model, "num_experts", 2)),
            "ratio": int(getattr(model, "ratio", 3)),
            "dropout": float(getattr(model, "dropout", 0.1))}


def save_checkpoint(path, model, qe, config, models, extra: Optional[dict] = None) -> None:
    """Write ``model`` (QME), ``qe`` (QualityEstimator or None), ``config`` and ``models``.

    ``config`` is a TrainConfig (or a dict); ``extra`` a dict of tensors / numbers / lists.
    Weights holding NaN or inf are refused (:class:`~qme_ext.qme.finite.NonFiniteWeightsError`)
    and nothing is written.
    """
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    qe_args = None if qe is None else dict(getattr(qe, "_qe_args"))
    payload = {
        "format": FORMAT,
        "models": list(models),
        "qme_args": _qme_args(model),
        "qme_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "qe_args": qe_args,
        "qe_state": None if qe is None else {k: v.detach().cpu()
                                              for k, v in qe.state_dict().items()},
        "quality": {"name": None if qe is None else getattr(qe, "quality_name", None),
                    "dim": None if qe is None else int(qe_args["in_dim"])},
        "config": dict(config or {}),
        "extra": dict(extra or {}),
    }
    if getattr(model, "open_set", None):   # missing-modality rule and stratum offsets
        payload["extra"].setdefault("open_set", model.open_set)
    for key in ("qme_state", "qe_state"):  # never a checkpoint of NaN weights
        require_finite_weights(payload[key], f"{os.fspath(path)}: {key}")
    state = payload["extra"].get("train_state")
    if isinstance(state, dict):
        require_finite_weights(state.get("best_state"), f"{os.fspath(path)}: best_state")
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint; return ``(model, qe, meta)``.

    ``model`` is a QME in eval mode, ``qe`` a QualityEstimator in eval mode or None, ``meta``
    the rest of the file (``models``, ``quality``, ``config``, ``extra``, ``format``).
    Raises :class:`CheckpointError` for a missing or foreign file, and for one that does not
    fit the schema of :mod:`qme_ext.qme.checkpoint_schema` (keys, types, shapes, finite
    weights, the ``--resume`` training state).
    """
    from .modules import QME, QualityEstimator
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a QME checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
    check_payload(data, path)  # keys, types, shapes, finite weights: before any use
    models = list(data["models"])
    model = QME(models, **data["qme_args"])
    model._qme_args = dict(data["qme_args"])
    model.load_state_dict(data["qme_state"])
    model.open_set = (data.get("extra") or {}).get("open_set")
    model.eval()
    qe = None
    if data.get("qe_state") is not None:
        qe = QualityEstimator(**data["qe_args"])
        qe._qe_args = dict(data["qe_args"])
        qe.quality_name = data["quality"]["name"]
        qe.load_state_dict(data["qe_state"])
        qe.eval()
    meta = {k: v for k, v in data.items() if k not in ("qme_state", "qe_state")}
    return model, qe, meta


def load_predictor(path, map_location="cpu"):
    """The :class:`~qme_ext.qme.predictor.Predictor` a ``qme-ext train`` checkpoint holds
    (``extra["predictor"]``; a checkpoint without one is its QME, as before issue 26)."""
    from .predictor import Predictor
    model, qe, meta = load_checkpoint(path, map_location=map_location)
    const_q = float(meta.get("config", {}).get("const_quality", 0.5))
    return Predictor.from_parts(model, qe, meta["extra"].get("predictor"), const_q)
