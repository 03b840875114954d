"""Synthetic whole-body (face + body + gait) score sets for the QME demo, tests and benchmarks.

:func:`synthetic_wholebody` returns ``dict(train=, val=, test=)`` :class:`~qme_ext.io.ScoreSet`
objects in the layout of docs/definitions.rst, §1 with K = 3 models in the order ``["face", "body", "gait"]``.

Generative model
----------------
Everything is drawn from ``numpy.random.default_rng(seed)``; the same seed gives the same data.

*Subjects.* ``num_train_subjects + num_val_subjects + num_subjects + num_unknown`` disjoint
subjects (train / validation / test gallery / test-only "unknown" subjects of the open set).
Subjects are grouped into look-alike clusters of ``cluster_size``; per modality ``m`` each
cluster has a centre ``c_m`` and each subject an identity vector
``u_m = normalise(a * c_m + sqrt(1 - a^2) * e_m)`` (``a = lookalike``, unit vectors in
``R^dim``), so cluster mates are similar in *every* modality at once: their confusions are
correlated across models. Each subject owns ``num_outfits`` clothes vectors ``o_k``.

*Samples.* Every sample (gallery entry, training centre or probe) draws a camera in
``0..num_cameras-1``, an outfit, a shared nuisance ``z ~ |N(0, 1)|`` (distance / pose: it
inflates the noise of all three modalities, a second source of correlated errors), a face
quality ``q*`` in [0, 1] and whether a face is visible at all. Features (unit vectors, noise
``n`` with i.i.d. ``N(0, 1/dim)`` entries so that ``|n| ~ 1``):

- face: ``normalise(u_f + sigma_f n)``, ``sigma_f = (0.25 + 5 (1 - q*)^2) (1 + 0.25 z)``; a
  probe without a face has no face feature;
- body: ``normalise(sqrt(w) u_b + sqrt(1 - w) o_k + sigma_b n)``, ``w = body_identity_weight``
  (default 0.35), ``sigma_b = 0.55 (1 + 0.3 z)``: strong within the same clothes, much weaker
  across a clothes change;
- gait: ``normalise(u_g + sigma_g n)``, ``sigma_g = 1.3 (1 + 0.2 z)``: weak but independent of
  clothes and face quality.

Gallery entries (and training centres, the mean of 3 such samples) are enrolment-quality:
``q* ~ U(0.85, 1)``, always a face, small nuisance.

*Probe face quality by regime.* ``face_good``: ``q* ~ Beta(6, 1.5)``, 5 % without face;
``face_poor``: ``q* ~ Beta(1.3, 3)``, 40 % without face; ``mixed``: half the probes from each
of the two, 20 % without face.

*Scores* (misaligned domains, as real matchers): with ``cos`` the cosine of the features,
face ``0.55 cos + 0.05 + N(0, 0.01)`` (roughly in [-0.2, 0.9]; a probe without face gets
``0.05 + N(0, 0.02)``, a detector failure scored against everything alike), body
``3 cos + 2`` (about [-1, 5]), gait ``0.15 cos + 0.4`` (about [0.25, 0.55]).
``merge_score_mat`` scores the probe against one template per gallery subject: the
normalised mean of that subject's gallery features.

*Quality-dependent score scale* (``score_drift`` d, default 0): a probe's body scores are
raised by ``d (1 - q_eff)`` and its gait scores by ``0.05 d (1 - q_eff)`` against every
column, ``q_eff`` = q* with a face and 0 without (far, back-facing, low-resolution probes
look alike to body and gait matchers: their impostor scores run high). Ranks within a row are
unchanged; the probes without a face get the highest scale, as in issue 19's score files.

*Correlated errors (issue 26; all off by default).* ``video_degradation`` D: every probe
draws one video degradation ``v ~ Exp(1)`` that multiplies the noise of face, body and gait
together by ``1 + D v`` (the same bad video hurts every matcher), and its observed face
quality (the quality features' ``q``) is ``q* / sqrt(1 + D v)``. ``twin_fraction`` f: f of
all subjects are paired, the second of each pair a look-alike of the first in *every*
modality (identity and outfit vectors ``normalise(s a + sqrt(1 - s^2) b)``,
``s = twin_similarity``; pairs straddle the splits and the unknown subjects, so test
impostors score high in every modality). ``noface_fraction`` replaces the regime's share of
probes without a face (5-30 % in issue 26's benchmark).

*Quality features.* ``quality["face"]`` (P, 64): ``tanh(W phi(q*) + b + 0.25 eps)`` with
``phi(q) = (q, q^2, sin 3q, sqrt q)`` and a fixed random ``W`` (64 x 4), ``b``; all zeros
when the probe has no face (the QE must map those to q = 0). ``quality["face_weights"]``
(P, 1): an off-the-shelf quality score, ``clip(q* + N(0, 0.15), 0, 1)``, 0 without face.
The latent ``q*`` itself is not stored in the ScoreSets; it is returned under ``meta``.

*Splits.* ``train``: probes of the training subjects against the training centres (one per
pid / camera / clothes combination present, ``n_subjects`` = train subjects; no merge
matrices). ``val`` and ``test``: each gallery subject enrols ``gallery_per_subject`` entries
over two outfits and random cameras; probes (``probes_per_subject`` per subject) wear any of
the ``num_outfits`` outfits (outfit 2 never enrolled: clothes-changing probes); ``val`` and
``test`` also hold probes of unknown subjects (``num_unknown`` for test, the same proportion for
val) that are in no gallery (open-set non-mated searches).

Returned dict: ``train``, ``val``, ``test`` ScoreSets and ``meta`` = dict of per-split latent
arrays (``q_star`` (P,), ``has_face`` (P,) bool) for plots and diagnostics.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..io import ScoreSet

__all__ = ["synthetic_wholebody", "REGIMES", "MODELS"]

MODELS = ("face", "body", "gait")
REGIMES = ("face_good", "face_poor", "mixed")
QUALITY_DIM = 64


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class _World:
    """Fixed subject identities, clothes and quality-feature map, shared by all splits."""

    def __init__(self, rng, n_subjects, dim, lookalike, cluster_size, num_outfits,
                 twin_fraction=0.0, twin_similarity=0.9):
        self.dim = dim
        n_clusters = -(-n_subjects // cluster_size)
        cluster = np.repeat(np.arange(n_clusters), cluster_size)[:n_subjects]
        self.ident = {}
        for m in MODELS:
            centres = _normalise(rng.standard_normal((n_clusters, dim)))
            own = _normalise(rng.standard_normal((n_subjects, dim)))
            self.ident[m] = _normalise(lookalike * centres[cluster]
                                       + np.sqrt(1 - lookalike ** 2) * own)
        self.outfits = _normalise(rng.standard_normal((n_subjects, num_outfits, dim)))
        self.qw = rng.standard_normal((QUALITY_DIM, 4)) * 1.5
        self.qb = rng.standard_normal(QUALITY_DIM) * 0.5
        if twin_fraction > 0:   # drawn last: without twins the stream is that of earlier versions
            self._twins(rng, n_subjects, twin_fraction, twin_similarity)

    def _twins(self, rng, n, fraction, sim):
        """Pair ``fraction`` of the subjects: the second of a pair becomes a look-alike of the
        first in every modality at once (identity cosine ~ ``sim``; outfits too)."""
        n_pairs = int(round(fraction * n / 2))
        pairs = rng.permutation(n)[:2 * n_pairs].reshape(-1, 2)
        a, b = pairs[:, 0], pairs[:, 1]
        for m in MODELS:
            u = self.ident[m]
            u[b] = _normalise(sim * u[a] + np.sqrt(1 - sim ** 2) * u[b])
        self.outfits[b] = _normalise(sim * self.outfits[a] + np.sqrt(1 - sim ** 2)
                                     * self.outfits[b])


def _probe_quality(rng, regime: str, n: int, noface_fraction=None):
    """(q* (n,), has_face (n,) bool) of probes under ``regime``; ``noface_fraction`` replaces
    the regime's share of probes without a face."""
    good = rng.beta(6.0, 1.5, n)
    poor = rng.beta(1.3, 3.0, n)
    if regime == "face_good":
        q, p_noface = good, 0.05
    elif regime == "face_poor":
        q, p_noface = poor, 0.40
    else:
        q, p_noface = np.where(rng.random(n) < 0.5, good, poor), 0.20
    if noface_fraction is not None:
        p_noface = float(noface_fraction)
    return q, rng.random(n) >= p_noface


class _Samples:
    """Features of a batch of samples (unit vectors per modality) and their ids."""

    def __init__(self, world, rng, pids, outfits, q, has_face, nuisance, body_w, video=None):
        n, d = pids.size, world.dim

        def noise():
            return rng.standard_normal((n, d)) / np.sqrt(d)

        s_f = (0.25 + 5.0 * (1 - q) ** 2) * (1 + 0.25 * nuisance)
        s_b = 0.55 * (1 + 0.3 * nuisance)
        s_g = 1.3 * (1 + 0.2 * nuisance)
        if video is not None:   # one per-probe video degradation scales all three at once
            s_f, s_b, s_g = s_f * video, s_b * video, s_g * video
        self.feat = {
            "face": _normalise(world.ident["face"][pids] + s_f[:, None] * noise()),
            "body": _normalise(np.sqrt(body_w) * world.ident["body"][pids]
                               + np.sqrt(1 - body_w) * world.outfits[pids, outfits]
                               + s_b[:, None] * noise()),
            "gait": _normalise(world.ident["gait"][pids] + s_g[:, None] * noise()),
        }
        self.has_face = has_face


def _enrol(world, rng, pids, outfits, body_w, repeats=1):
    """Enrolment-quality features; with ``repeats`` > 1 the normalised mean of that many."""
    acc = None
    for _ in range(repeats):
        n = pids.size
        s = _Samples(world, rng, pids, outfits, rng.uniform(0.85, 1.0, n), np.ones(n, bool),
                     0.3 * np.abs(rng.standard_normal(n)), body_w)
        acc = s.feat if acc is None else {m: acc[m] + s.feat[m] for m in MODELS}
    return {m: _normalise(acc[m]) for m in MODELS}


def _scores(probe_feat, has_face, gallery_feat, rng, drift=None) -> dict:
    """Raw (P, G) float32 score matrices of the three matchers (their own domains);
    ``drift`` (P,) raises a probe's body and gait scores (module docstring)."""
    out = {}
    cos = probe_feat["face"] @ gallery_feat["face"].T
    face = 0.55 * cos + 0.05 + rng.normal(0.0, 0.01, cos.shape)
    noface = 0.05 + rng.normal(0.0, 0.02, cos.shape)
    out["face"] = np.where(has_face[:, None], face, noface)
    out["body"] = 3.0 * (probe_feat["body"] @ gallery_feat["body"].T) + 2.0
    out["gait"] = 0.15 * (probe_feat["gait"] @ gallery_feat["gait"].T) + 0.4
    if drift is not None:
        out["body"] = out["body"] + drift[:, None]
        out["gait"] = out["gait"] + 0.05 * drift[:, None]
    return {m: v.astype(np.float32) for m, v in out.items()}


def _quality_features(world, rng, q, has_face):
    phi = np.stack([q, q ** 2, np.sin(3 * q), np.sqrt(q)], axis=1)
    x = np.tanh(phi @ world.qw.T + world.qb + 0.25 * rng.standard_normal((q.size, QUALITY_DIM)))
    x[~has_face] = 0.0
    w = np.clip(q + rng.normal(0.0, 0.15, q.size), 0.0, 1.0)
    w[~has_face] = 0.0
    return x.astype(np.float32), w[:, None].astype(np.float32)


def _video(rng, degradation: float, n: int):
    """(n,) noise multiplier ``1 + degradation * v`` of a per-probe video degradation, v
    exponential (most videos fine, a tail of bad ones); None when ``degradation`` is 0."""
    if not degradation:
        return None
    return 1.0 + float(degradation) * rng.exponential(1.0, n)


def _probes(world, rng, pids, regime, num_outfits, num_cameras, body_w, video_degradation=0.0,
            noface_fraction=None):
    n = pids.size
    q, has_face = _probe_quality(rng, regime, n, noface_fraction)
    outfits = rng.integers(0, num_outfits, n)
    cams = rng.integers(0, num_cameras, n)
    nuisance = np.abs(rng.standard_normal(n))
    video = _video(rng, video_degradation, n)
    s = _Samples(world, rng, pids, outfits, q, has_face, nuisance, body_w, video)
    if video is not None:
        # the face detector sees part of the degradation: the observed quality drops with it
        q = q / np.sqrt(video)
    return s, outfits, cams, q, has_face


def _drift(score_drift: float, q, has_face):
    """(P,) body-score shift ``score_drift * (1 - q_eff)``, q_eff = 0 without a face; None
    when ``score_drift`` is 0 (the scores are then exactly those of earlier versions)."""
    if not score_drift:
        return None
    return float(score_drift) * (1.0 - np.where(has_face, q, 0.0))


def _clothes_id(pids, outfits):
    return pids.astype(np.int64) * 10 + outfits


def _make_split(world, rng, gallery_subjects, unknown_subjects, regime, probes_per_subject,
                gallery_per_subject, num_outfits, num_cameras, body_w, score_drift=0.0,
                **probe_opts):
    """A val/test ScoreSet: gallery of ``gallery_subjects`` + probes of both subject sets."""
    g_pids = np.repeat(gallery_subjects, gallery_per_subject)
    # gallery entries alternate between the first two outfits (outfit >= 2 is never enrolled)
    g_out = np.tile(np.arange(gallery_per_subject) % min(2, num_outfits), gallery_subjects.size)
    g_cams = rng.integers(0, num_cameras, g_pids.size)
    g_feat = _enrol(world, rng, g_pids, g_out, body_w)
    q_pids = np.concatenate([np.repeat(gallery_subjects, probes_per_subject),
                             np.repeat(unknown_subjects, probes_per_subject)])
    probe, q_out, q_cams, q, has_face = _probes(world, rng, q_pids, regime, num_outfits,
                                                num_cameras, body_w, **probe_opts)
    unique = np.unique(g_pids)
    col = np.searchsorted(unique, g_pids)
    templates = {}
    for m in MODELS:
        acc = np.zeros((unique.size, world.dim))
        np.add.at(acc, col, g_feat[m])
        templates[m] = _normalise(acc)
    drift = _drift(score_drift, q, has_face)
    score = _scores(probe.feat, has_face, g_feat, rng, drift)
    merge = _scores(probe.feat, has_face, templates, rng, drift)
    qx, qw = _quality_features(world, rng, q, has_face)
    ss = ScoreSet(models=list(MODELS), score_mats=score, merge_score_mats=merge,
                  q_pids=q_pids.astype(np.int64), q_camids=q_cams.astype(np.int64),
                  q_clothes_ids=_clothes_id(q_pids, q_out),
                  g_pids=g_pids.astype(np.int64), g_camids=g_cams.astype(np.int64),
                  g_clothes_ids=_clothes_id(g_pids, g_out), unique_g_pids=unique.astype(np.int64),
                  quality={"face": qx, "face_weights": qw})
    return ss.validate(), {"q_star": q, "has_face": has_face}


def _make_train(world, rng, subjects, regime, probes_per_subject, num_outfits, num_cameras,
                body_w, score_drift=0.0, **probe_opts):
    """Training probes vs training centres: one centre per (pid, camera, clothes) seen."""
    q_pids = np.repeat(subjects, probes_per_subject)
    probe, q_out, q_cams, q, has_face = _probes(world, rng, q_pids, regime, num_outfits,
                                                num_cameras, body_w, **probe_opts)
    combos = np.unique(np.stack([q_pids, q_cams, q_out], axis=1), axis=0)
    c_pids, c_cams, c_out = combos[:, 0], combos[:, 1], combos[:, 2]
    c_feat = _enrol(world, rng, c_pids, c_out, body_w, repeats=3)
    score = _scores(probe.feat, has_face, c_feat, rng, _drift(score_drift, q, has_face))
    qx, qw = _quality_features(world, rng, q, has_face)
    ss = ScoreSet(models=list(MODELS), score_mats=score, merge_score_mats={},
                  q_pids=q_pids.astype(np.int64), q_camids=q_cams.astype(np.int64),
                  q_clothes_ids=_clothes_id(q_pids, q_out),
                  g_pids=c_pids.astype(np.int64), g_camids=c_cams.astype(np.int64),
                  g_clothes_ids=_clothes_id(c_pids, c_out),
                  unique_g_pids=np.unique(c_pids).astype(np.int64),
                  quality={"face": qx, "face_weights": qw})
    return ss.validate(), {"q_star": q, "has_face": has_face}


def synthetic_wholebody(regime: str = "mixed", seed: int = 0, num_subjects: int = 100,
                        num_train_subjects: int = 100, num_val_subjects: int = 60,
                        num_unknown: int = 25, probes_per_subject: int = 3,
                        train_probes_per_subject: int = 6, gallery_per_subject: int = 4,
                        num_cameras: int = 4, num_outfits: int = 3, dim: int = 32,
                        lookalike: float = 0.55, cluster_size: int = 3,
                        body_identity_weight: float = 0.35, score_drift: float = 0.0,
                        video_degradation: float = 0.0, twin_fraction: float = 0.0,
                        twin_similarity: float = 0.9,
                        noface_fraction: Optional[float] = None) -> dict:
    """Generate train / val / test ScoreSets of face, body and gait matchers (module docstring).

    Parameters
    ----------
    regime : "face_good", "face_poor" or "mixed" -- the probes' face-quality distribution.
    seed : generator seed; identical seeds give identical data.
    num_subjects : gallery subjects of the test split (S of its merge matrices).
    num_train_subjects, num_val_subjects : disjoint subjects of the other splits.
    num_unknown : test probes' subjects absent from the gallery (val gets the same share).
    probes_per_subject, train_probes_per_subject, gallery_per_subject : sizes per subject.
    num_cameras, num_outfits, dim, lookalike, cluster_size, body_identity_weight : model
        parameters (see the module docstring).
    score_drift : quality-dependent score scale (module docstring); 0 (default) leaves the
        scores exactly as without it.
    video_degradation, twin_fraction, twin_similarity, noface_fraction : issue 26's
        properties of real whole-body data (module docstring, "Correlated errors"); the
        defaults (0, 0, -, None) leave the data exactly as without them.

    Returns
    -------
    dict with ``train``, ``val``, ``test`` (:class:`~qme_ext.io.ScoreSet`, models
    ``[face, body, gait]``, float32 scores, ``quality["face"]`` (P, 64) and
    ``quality["face_weights"]`` (P, 1)) and ``meta`` ({split: {"q_star", "has_face"}}).
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {list(REGIMES)}")
    for name, v in (("num_subjects", num_subjects), ("num_train_subjects", num_train_subjects),
                    ("num_val_subjects", num_val_subjects),
                    ("probes_per_subject", probes_per_subject),
                    ("train_probes_per_subject", train_probes_per_subject),
                    ("gallery_per_subject", gallery_per_subject),
                    ("num_cameras", num_cameras), ("num_outfits", num_outfits)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if num_unknown < 0:
        raise ValueError(f"num_unknown must be >= 0, got {num_unknown}")
    if not 0.0 <= lookalike < 1.0:
        raise ValueError(f"lookalike must be in [0, 1), got {lookalike}")
    if video_degradation < 0:
        raise ValueError(f"video_degradation must be >= 0, got {video_degradation}")
    if not 0.0 <= twin_fraction <= 1.0 or not 0.0 <= twin_similarity < 1.0:
        raise ValueError(f"twin_fraction must be in [0, 1] and twin_similarity in [0, 1), got "
                         f"{twin_fraction}, {twin_similarity}")
    if noface_fraction is not None and not 0.0 <= noface_fraction <= 1.0:
        raise ValueError(f"noface_fraction must be in [0, 1], got {noface_fraction}")
    rng = np.random.default_rng(seed)
    # validation mirrors the test split's share of unknown subjects (open-set calibration)
    n_val_unknown = int(round(num_unknown * num_val_subjects / max(num_subjects, 1)))
    n_all = num_train_subjects + num_val_subjects + n_val_unknown + num_subjects + num_unknown
    world = _World(rng, n_all, dim, lookalike, cluster_size, num_outfits, twin_fraction,
                   twin_similarity)
    # subjects are shuffled so that look-alike clusters straddle the splits
    order = rng.permutation(n_all)
    cuts = np.cumsum([num_train_subjects, num_val_subjects, n_val_unknown, num_subjects])
    tr, va, va_unk, te, te_unk = (np.sort(a) for a in np.split(order, cuts))
    common = dict(num_outfits=num_outfits, num_cameras=num_cameras,
                  body_w=body_identity_weight, score_drift=score_drift)
    if video_degradation:
        common["video_degradation"] = video_degradation
    if noface_fraction is not None:
        common["noface_fraction"] = noface_fraction
    train, m_tr = _make_train(world, rng, tr, regime, train_probes_per_subject, **common)
    val, m_va = _make_split(world, rng, va, va_unk, regime, probes_per_subject,
                            gallery_per_subject, **common)
    test, m_te = _make_split(world, rng, te, te_unk, regime, probes_per_subject,
                             gallery_per_subject, **common)
    return {"train": train, "val": val, "test": test,
            "meta": {"train": m_tr, "val": m_va, "test": m_te}}
