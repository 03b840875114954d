"""A small synthetic score set in the layout of docs/definitions.rst, §1, for demos, tests and ``qme-ext example``.

Three models with deliberately different score domains, so that normalisation matters:

- ``face``: cosine-like, in [-1, 1]; its genuine/impostor separation grows with the probe's face
  quality q ~ Beta(2, 2) (q is stored as ``quality/face_weights``; ``quality/face`` holds 8 noisy
  features derived from q, a stand-in for the style statistics a quality estimator reads).
- ``body``: ReID-like, centred at 0.6 with small spread; strong when probe and gallery wear the
  same clothes, weak across clothes (the clothes-changing difficulty).
- ``gait``: large-valued (around 50), clothes-independent, moderately separable.

Gallery entries of a subject cycle through 3 cameras x 2 outfits, so every probe has good
entries for the general (GR), same-clothes (SC) and clothes-changing (CC) protocols once a
subject has 6 or more entries. Clothes ids are ``2 * pid + outfit`` (unique per subject, as in
CCVID). ``merge_score_mat`` column j is the mean of the probe's gallery scores of subject
``unique_g_pids[j]`` (a score-level stand-in for feature averaging).
"""
from __future__ import annotations

import numpy as np

from ..io import ScoreSet

NUM_CAMERAS = 3
NUM_OUTFITS = 2
QUALITY_DIM = 8


def _subject_means(score_mat: np.ndarray, g_pids: np.ndarray, unique_g_pids: np.ndarray):
    """(P, G) scores -> (P, S) per-subject means over the gallery columns of each subject."""
    col = np.searchsorted(unique_g_pids, g_pids)
    onehot = np.zeros((g_pids.size, unique_g_pids.size), dtype=np.float64)
    onehot[np.arange(g_pids.size), col] = 1.0
    onehot /= onehot.sum(axis=0, keepdims=True)
    return (score_mat.astype(np.float64) @ onehot).astype(np.float32)


def make_example_scoreset(num_probes: int = 60, num_gallery: int = 120, num_subjects: int = 20,
                          seed: int = 0) -> ScoreSet:
    """Build a deterministic synthetic :class:`~qme_ext.io.ScoreSet`.

    Parameters
    ----------
    num_probes : int
        P, number of probes (each belongs to one of the gallery subjects).
    num_gallery : int
        G >= num_subjects, gallery entries, spread as evenly as possible over the subjects.
    num_subjects : int
        S >= 2, gallery subjects (= columns of the merge matrices).
    seed : int
        Seed of the ``numpy.random.Generator``; the same arguments give the same arrays.

    Returns
    -------
    ScoreSet with models ``["face", "body", "gait"]``, float32 ``(P, G)`` and ``(P, S)``
    matrices, int64 ids and ``quality`` = ``{"face": (P, 8), "face_weights": (P, 1)}``.
    """
    if num_subjects < 2 or num_gallery < num_subjects or num_probes < 1:
        raise ValueError(f"need num_subjects >= 2, num_gallery >= num_subjects and "
                         f"num_probes >= 1; got P={num_probes}, G={num_gallery}, "
                         f"S={num_subjects}")
    rng = np.random.default_rng(seed)
    pids = np.arange(num_subjects, dtype=np.int64) * 3 + 1  # non-contiguous ids on purpose

    g_subject = np.arange(num_gallery) % num_subjects
    g_slot = np.arange(num_gallery) // num_subjects  # k-th entry of its subject
    g_pids = pids[g_subject]
    g_camids = (g_slot % NUM_CAMERAS).astype(np.int64)
    g_outfit = (g_slot // NUM_CAMERAS) % NUM_OUTFITS
    g_clothes = g_pids * NUM_OUTFITS + g_outfit

    q_subject = rng.integers(0, num_subjects, size=num_probes)
    q_pids = pids[q_subject]
    q_camids = rng.integers(0, NUM_CAMERAS, size=num_probes).astype(np.int64)
    q_clothes = q_pids * NUM_OUTFITS + rng.integers(0, NUM_OUTFITS, size=num_probes)
    quality = rng.beta(2.0, 2.0, size=num_probes)

    genuine = (q_pids[:, None] == g_pids[None, :]).astype(np.float64)
    same_clothes = q_clothes[:, None] == g_clothes[None, :]

    def noise():
        return rng.standard_normal((num_probes, num_gallery))

    face = np.clip(0.15 * (4.0 * quality[:, None] * genuine + noise()), -1.0, 1.0)
    body = 0.6 + 0.08 * (genuine * np.where(same_clothes, 3.0, 1.2) + noise())
    gait = 50.0 + 10.0 * (1.8 * genuine + noise())
    score_mats = {name: mat.astype(np.float32)
                  for name, mat in (("face", face), ("body", body), ("gait", gait))}

    unique_g_pids = np.unique(g_pids)
    merge = {m: _subject_means(s, g_pids, unique_g_pids) for m, s in score_mats.items()}
    feats = quality[:, None] * rng.uniform(0.5, 1.5, size=QUALITY_DIM) \
        + 0.05 * rng.standard_normal((num_probes, QUALITY_DIM))
    return ScoreSet(
        models=list(score_mats),
        score_mats=score_mats,
        merge_score_mats=merge,
        q_pids=q_pids, q_camids=q_camids, q_clothes_ids=q_clothes.astype(np.int64),
        g_pids=g_pids, g_camids=g_camids, g_clothes_ids=g_clothes.astype(np.int64),
        unique_g_pids=unique_g_pids,
        quality={"face": feats.astype(np.float32),
                 "face_weights": quality[:, None].astype(np.float32)},
    ).validate()
