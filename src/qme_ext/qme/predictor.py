"""One inference path for a trained fusion (issue 26): :class:`Predictor` and :class:`Fuser`.

Every consumer of a trained fusion -- :func:`qme_ext.qme.predict` / ``qme-ext fuse``, the
fused search :func:`qme_ext.qme.search`, :func:`qme_ext.metrics.evaluate_embeddings` and the
training's own validation -- calls :meth:`Predictor.fuse_block`, so a checkpoint scores the
same everywhere.

A predictor is one of

- ``"qme"``: a trained QME (+ quality estimator). Per block of probe rows: the probe quality
  (QE output, 0 without a face; the constant gate without a QE), absent modalities replaced
  by the channel's training mean (:mod:`.missing`, with the ``open_set`` option), the experts
  in eval mode, then the per-stratum offsets (:mod:`.calibration`);
- ``"fusion"``: a fitted baseline fusion (:class:`qme_ext.fusion.FusionResult`, e.g. the
  calibrated ``rhe`` or ``weighted`` sum) -- what the cross-validated selection of
  :mod:`.selection` falls back to when the trained QME does not beat it;
- ``"model"``: one of the input models' raw scores (the best single matcher);
- ``"ensemble"``: the mean of several predictors' per-probe Z-normed scores
  (``members``), the cross-validation's hedge when its best candidates are within noise.

Any of them may end with the per-probe score normalisation ``scale="znorm"``
(:func:`znorm_rows`): a monotone increasing affine map of each probe's row, so ranks within
a row never change.

:class:`Fuser` is the protocol the engine calls: ``fuse_block(block, q=None)`` with ``block``
a :class:`~qme_ext.io.ScoreSet` of some probe rows (every model's score rows, merge rows when
wanted, the probes' quality rows and ids) returns ``(score rows (b, G), merge rows (b, S) or
None)`` float32. :class:`~qme_ext.fusion.FusionResult` implements it too.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

__all__ = ["Fuser", "Predictor", "znorm_rows", "ensemble_rows", "SCALES"]

SCALES = (None, "znorm")


@runtime_checkable
class Fuser(Protocol):
    """What the evaluation engine calls to fuse a block of probe rows (module docstring)."""

    models: Sequence[str]

    def fuse_block(self, block, q=None) -> tuple:
        """(fused score rows (b, G) float32 ndarray, fused merge rows (b, S) or None)."""


def znorm_rows(score: np.ndarray, merge: Optional[np.ndarray] = None) -> tuple:
    """Per-probe Z-norm: each row of ``score`` (b, G) and ``merge`` (b, S) minus the mean,
    over the standard deviation, of that probe's ``score`` row (its cohort: the gallery
    entries, all but a few of them impostors). A positive affine map per row, so the ranks
    within a row are unchanged; float64 statistics, float32 results."""
    s = np.asarray(score, dtype=np.float64)
    mu = s.mean(axis=1, keepdims=True) if s.shape[1] else np.zeros((s.shape[0], 1))
    sd = s.std(axis=1, keepdims=True) if s.shape[1] else np.ones((s.shape[0], 1))
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    out = ((s - mu) / sd).astype(np.float32)
    mo = None if merge is None else ((np.asarray(merge, np.float64) - mu) / sd).astype(np.float32)
    return out, mo


def ensemble_rows(parts: Sequence[tuple]) -> tuple:
    """The mean over ``parts`` [(score rows, merge rows or None), ...] of their per-probe
    Z-normed rows (:func:`znorm_rows`); merge rows only when every part has them."""
    z = [znorm_rows(s, m) for s, m in parts]
    s = np.mean([a for a, _ in z], axis=0).astype(np.float32)
    m = None if any(b is None for _, b in z) else \
        np.mean([b for _, b in z], axis=0).astype(np.float32)
    return s, m


class Predictor:
    """A trained fusion as one callable object (module docstring); implements :class:`Fuser`.

    Build it with :meth:`from_qme`, :meth:`from_fusion`, :meth:`from_model` or
    :func:`qme_ext.qme.checkpoint.load_predictor`; ``scale`` is None or ``"znorm"``.
    """

    def __init__(self, kind: str, models: Sequence[str], *, model=None, qe=None,
                 fusion=None, name: Optional[str] = None, const_quality: float = 0.5,
                 quality_name: Optional[str] = None, scale: Optional[str] = None,
                 face: Optional[str] = None, info: Optional[dict] = None,
                 members: Optional[list] = None):
        if kind not in ("qme", "fusion", "model", "ensemble"):
            raise ValueError(f"kind: expected 'qme', 'fusion', 'model' or 'ensemble', got "
                             f"{kind!r}")
        if scale not in SCALES:
            raise ValueError(f"scale: expected one of {list(SCALES)}, got {scale!r}")
        self.kind, self.models = kind, list(models)
        self.model, self.qe, self.fusion, self.name = model, qe, fusion, name
        self.const_quality, self.scale, self.face = float(const_quality), scale, face
        self.quality_name = quality_name or getattr(qe, "quality_name", None) or "face"
        self.info = dict(info or {})
        self.members = list(members or [])
        if kind == "ensemble" and not self.members:
            raise ValueError("members: an ensemble needs at least one predictor")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_qme(cls, model, qe=None, const_quality: float = 0.5, scale=None,
                 quality_name=None, info=None, models=None) -> "Predictor":
        return cls("qme", list(models or model.models), model=model, qe=qe, const_quality=const_quality,
                   scale=scale, quality_name=quality_name, info=info)

    @classmethod
    def from_fusion(cls, result, name: Optional[str] = None, scale=None, face=None,
                    info=None) -> "Predictor":
        return cls("fusion", list(result.normalisers), fusion=result, name=name or result.method,
                   scale=scale, face=face, info=info)

    @classmethod
    def from_model(cls, name: str, models: Sequence[str], scale=None, info=None) -> "Predictor":
        if name not in models:
            raise ValueError(f"name: {name!r} is not among the models {list(models)}")
        return cls("model", [name], name=name, scale=scale, info=info)

    @classmethod
    def ensemble(cls, members: Sequence["Predictor"], scale=None, info=None) -> "Predictor":
        models = list(dict.fromkeys(m for p in members for m in p.models))
        qme = next((p for p in members if p.kind == "qme"), None)
        return cls("ensemble", models, model=None if qme is None else qme.model,
                   qe=None if qme is None else qme.qe, name="+".join(p.describe()
                                                                     for p in members),
                   scale=scale, info=info, members=list(members))

    @classmethod
    def from_parts(cls, model, qe, spec: Optional[dict], const_quality: float = 0.5):
        """The predictor described by ``spec`` (:meth:`spec`) around a loaded QME."""
        spec = dict(spec or {"kind": "qme"})
        scale = spec.get("scale")
        if spec["kind"] == "ensemble":
            return cls.ensemble([cls.from_parts(model, qe, m, const_quality)
                                 for m in spec["members"]], scale=scale, info=spec.get("info"))
        if spec["kind"] == "qme":
            return cls.from_qme(model, qe, const_quality, scale=scale, info=spec.get("info"))
        if spec["kind"] == "fusion":
            from ..fusion import fusion_from_dict
            return cls.from_fusion(fusion_from_dict(spec["fusion"]), spec.get("name"),
                                   scale=scale, face=spec.get("face"), info=spec.get("info"))
        return cls.from_model(spec["name"], list(model.models), scale=scale,
                              info=spec.get("info"))

    def spec(self) -> dict:
        """What a checkpoint stores of this predictor (``extra["predictor"]``)."""
        out = {"kind": self.kind, "scale": self.scale, "name": self.name, "face": self.face,
               "info": self.info}
        if self.kind == "fusion":
            from ..fusion import fusion_to_dict
            out["fusion"] = fusion_to_dict(self.fusion)
        if self.kind == "ensemble":
            out["members"] = [{**m.spec(), "info": {}} for m in self.members]
        return out

    def describe(self) -> str:
        what = {"qme": "QME", "fusion": f"fusion {self.name}", "model": f"model {self.name}",
                "ensemble": f"ensemble of {self.name}"}
        return what[self.kind] + (f" + {self.scale}" if self.scale else "")

    # -- inference ---------------------------------------------------------------------------
    def quality(self, block, q=None) -> Optional[np.ndarray]:
        """(b,) float32 probe quality the QME gates with (``q`` given wins), or None."""
        if self.kind != "qme":
            return None
        if q is not None:
            q = np.asarray(q, dtype=np.float32).reshape(-1)
            if q.shape[0] != block.num_probes:
                raise ValueError(f"quality: expected {block.num_probes} values (one per probe), "
                                 f"got {q.shape[0]}")
            return q
        from .inference import _quality_of
        return _quality_of(self.qe, block, self.quality_name, self.const_quality, None)

    def absent(self, x: np.ndarray, block) -> Optional[np.ndarray]:
        """(b, K) absent models of raw scores ``x`` (b, K, G) (None without open_set)."""
        from .inference import _absent
        return _absent(block, self.models, x, getattr(self.model, "open_set", None))

    def offsets(self, q: np.ndarray, absent):
        """(b, 1) float32 per-stratum offsets, or 0.0 without calibration."""
        from .calibration import StratumOffsets
        spec = getattr(self.model, "open_set", None)
        cal = StratumOffsets.from_dict(spec.get("calibration")) if spec else None
        if cal is None:
            return 0.0
        return cal.offset(q, absent).astype(np.float32)[:, None]

    def fuse_cube(self, x, q, absent=None, batch: int = 256, device=None) -> np.ndarray:
        """(b, n) float32 experts' output of raw scores ``x`` (b, K, n) and quality ``q``
        (b,): absent rows and NaN replaced by the training mean (no offsets, no scale)."""
        from .missing import impute_absent
        from .inference import _forward
        model = self.model
        from ..ops.inputs import check_target_device  # 'meta', CUDA on a CPU build: ValueError
        dev = (check_target_device(device) if device is not None
               else next(model.parameters()).device)
        mean = model.experts[0].running_mean.detach().cpu().numpy()
        qt = torch.as_tensor(q) if q is not None else None
        return _forward(model, impute_absent(x, absent, mean), qt, batch, dev)

    def fuse_block(self, block, q=None, *, batch: int = 256, device=None) -> tuple:
        """(score rows (b, G), merge rows (b, S) or None) float32 of a ScoreSet block."""
        missing = [m for m in self.models if m not in block.models]
        if missing:
            raise ValueError(f"scoreset lacks model(s) {missing}; the fusion needs "
                             f"{self.models}")
        if self.kind == "model":
            s = np.asarray(block.score_mats[self.name], dtype=np.float32)
            m = block.merge_score_mats.get(self.name)
            out = (s, None if m is None else np.asarray(m, dtype=np.float32))
        elif self.kind == "ensemble":
            out = ensemble_rows([m.fuse_block(block, q, batch=batch, device=device)
                                 for m in self.members])
        elif self.kind == "fusion":
            from ..fusion import apply_fusion
            f = apply_fusion(self.fusion, block, "_fused", face=self.face)
            out = (f.score_mats["_fused"], f.merge_score_mats.get("_fused"))
        else:
            out = self._fuse_qme(block, q, batch, device)
        if self.scale == "znorm":
            out = znorm_rows(*out)
        return out

    def _fuse_qme(self, block, q, batch, device) -> tuple:
        from .inference import _stack
        q_np = self.quality(block, q)
        x = _stack(block, self.models)
        absent = self.absent(x, block)
        offset = self.offsets(q_np, absent)
        outs = []
        for key in ("score_mats", "merge_score_mats"):
            if any(m not in getattr(block, key) for m in self.models):
                outs.append(None)
                continue
            if key != "score_mats":
                x = _stack(block, self.models, key)
            outs.append(self.fuse_cube(x, q_np, absent, batch, device) + offset)
        return outs[0], outs[1]

    predict = fuse_block

    def to(self, device) -> "Predictor":
        for part in (self.model, self.qe):
            if part is not None:
                part.to(device)
        return self
