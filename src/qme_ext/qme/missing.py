"""Absent modalities of a probe: how they are recognised and how the experts see them.

A modality is **absent** for a probe when (any of)

- its ``score_mat`` row (and so its ``merge_score_mat`` row) is all NaN -- the way to mark it
  in a score file (docs/definitions.rst, §1): write NaN over the probe's row of ``{model}/score_mat`` and
  ``{model}/merge_score_mat``;
- its row is all exactly 0.0 -- what the QME reference's ``nan_to_num`` leaves of a NaN row;
- it is the quality model (the model whose quality features ``quality/{name}`` feed the
  quality estimator) and the probe's quality features are all zero (no face detected).

An absent modality is *missing*, not a score: its raw scores are replaced by the channel's
training mean, which the experts' BatchNorm maps to exactly 0, so in a linear (warm-started)
expert it contributes nothing and the fusion is that of the present models on their own
calibrated scale; the per-stratum offsets of :mod:`qme_ext.qme.calibration` then put every
missing pattern on the common scale. Isolated NaN entries (a row only partly NaN) are
replaced the same way, entry by entry, so NaN never reaches the experts.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["absent_modalities", "impute_absent", "present_means"]


def absent_modalities(x: np.ndarray, quality_features: Optional[np.ndarray] = None,
                      quality_index: Optional[int] = None) -> np.ndarray:
    """(P, K) bool: model k is absent for probe p (module docstring).

    x : (P, K, G) raw scores (NaN allowed). quality_features : (P, D) features of the model
    ``quality_index`` (all-zero row = that model is absent), or None.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x: expected (P, K, G) scores, got shape {x.shape}")
    P, K, G = x.shape
    if G == 0:
        absent = np.zeros((P, K), dtype=bool)
    else:
        absent = ((x == 0) | np.isnan(x)).all(axis=2)   # NaN, zeros, or a mix of both
    if quality_features is not None and quality_index is not None:
        f = np.asarray(quality_features).reshape(P, -1)
        absent[:, int(quality_index)] |= ~np.any(f != 0, axis=1)
    return absent


def present_means(x: np.ndarray, absent: np.ndarray) -> np.ndarray:
    """(K,) float64 mean of each channel over its present, non-NaN entries (0 if none)."""
    x = np.asarray(x)
    keep = ~absent[:, :, None] & ~np.isnan(x)
    tot = np.where(keep, x, 0.0).sum(axis=(0, 2), dtype=np.float64)
    n = keep.sum(axis=(0, 2))
    return np.where(n > 0, tot / np.maximum(n, 1), 0.0)


def impute_absent(x: np.ndarray, absent: Optional[np.ndarray], mean) -> np.ndarray:
    """A float32 copy of ``x`` (P, K, G) with absent rows and NaN entries set to ``mean`` (K,).

    ``absent`` None replaces only NaN entries. The input is never modified.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    fill = np.broadcast_to(np.asarray(mean, dtype=np.float32).reshape(1, -1, 1), out.shape)
    mask = np.isnan(out)
    if absent is not None:
        mask |= np.asarray(absent, dtype=bool)[:, :, None]
    if mask.any():
        out[mask] = fill[mask]
    return out
