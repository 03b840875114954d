"""The eval-mode pieces of QME inference that the predictor (:mod:`.predictor`) and the
trainer (:mod:`.train`) share: quality estimates, the stacked score cube, the absent
modalities, the batched forward pass. Kept below both so neither imports the other back."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def _features(scoreset, name: str) -> np.ndarray:
    if name not in scoreset.quality:
        raise ValueError(f"missing quality features 'quality/{name}'; available: "
                         f"{sorted(scoreset.quality)}")
    x = np.asarray(scoreset.quality[name], dtype=np.float32)
    return x.reshape(x.shape[0], -1)


def estimate_quality(qe, features, batch: int = 4096) -> np.ndarray:
    """QE output q (P,) in [0, 1] for features (P, D) (or (P, T, D)); 0 for all-zero rows.

    The QE runs where its parameters are (CPU or GPU); features come in as numpy or a
    tensor on any device, q goes out as a numpy array.
    """
    device = next(qe.parameters(), torch.empty(0)).device
    x = torch.as_tensor(features).detach().to("cpu", torch.float32)
    out = np.empty(x.shape[0], dtype=np.float32)
    was = qe.training
    qe.eval()
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            xb = x[s:s + batch].to(device)
            out[s:s + batch] = qe(xb).reshape(-1).float().cpu().numpy()
    qe.train(was)
    noface = ~np.any(x.reshape(x.shape[0], -1).numpy() != 0, axis=1)
    out[noface] = 0.0
    return out


def _stack(scoreset, models, key="score_mats") -> np.ndarray:
    mats = getattr(scoreset, key)
    missing = [m for m in models if m not in mats]
    if missing:
        raise ValueError(f"scoreset lacks {key[:-1]} of model(s) {missing}")
    return np.stack([np.asarray(mats[m], dtype=np.float32) for m in models], axis=1)


def _quality_of(qe, scoreset, config_or_name, const: float, device) -> np.ndarray:
    if qe is None:
        return np.full(scoreset.num_probes, const, dtype=np.float32)
    name = getattr(qe, "quality_name", None) or config_or_name
    return estimate_quality(qe, _features(scoreset, name))


def _absent(scoreset, models, x, spec) -> Optional[np.ndarray]:
    """(P, K) absent models of ``scoreset`` (:mod:`.missing`) under the model's open-set
    ``spec``; None without one (paper recipe, older checkpoints: only NaN is replaced)."""
    from .missing import absent_modalities
    if not spec:
        return None
    qm, qn = spec.get("quality_model"), spec.get("quality_name")
    idx = models.index(qm) if qm in models else None
    feats = scoreset.quality.get(qn) if (idx is not None and qn) else None
    return absent_modalities(x, feats, idx if feats is not None else None)


def _forward(model, x: np.ndarray, q: torch.Tensor, batch: int, dev) -> np.ndarray:
    """Eval-mode fused scores (P, G) float32 of raw scores x (P, K, G), quality q (P,)."""
    res = np.empty((x.shape[0], x.shape[2]), dtype=np.float32)
    was = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            xb = torch.as_tensor(x[s:s + batch], device=dev)
            qb = None if q is None else q[s:s + batch].to(dev)
            res[s:s + batch] = model(xb, qb).float().cpu().numpy()
    model.train(was)
    return res
