"""The evaluation engine: Rank-k/CMC, mAP, TAR@FAR, FNIR@FPIR, ROC/DET/EER (docs/definitions.rst, §2).

Every metric is computed exactly by one streaming kernel pass per metric family
(CPU threads or CUDA), with integer counts deciding every result:

* ranking: ``qme_ext::rank_counts`` counts, per probe, the entries ranked before
  each good gallery entry (no sort); the three protocols (general, SC, CC) share
  one pass in :func:`evaluate`;
* verification: ``qme_ext::key_histogram`` radix-selects the impostor order
  statistics, genuine pairs being gathered from the id vectors (no P x G mask);
* open-set: ``qme_ext::openset_stats`` gives every split's statistics in one pass.

The passes run over row blocks of a :class:`~qme_ext.metrics.accumulate.BlockSource`
whose partial states concatenate (per-probe results) or add (histograms,
counts) before one finishing step: an in-memory matrix is the one-block case,
:func:`qme_ext.metrics.evaluate_file` streams an HDF5 score file larger than memory, and
:mod:`qme_ext.distributed` combines shards held by several processes; the
results are bit-identical in all three cases.

Inputs are numpy arrays or torch tensors (CPU or CUDA), scores float16, bfloat16,
float32 or float64, ids integer (or float holding integers). Results are Python
floats / numpy arrays. ``qme_ext.reference`` holds the literal (sort-based) numpy
definitions these functions are tested against.

Conventions and choices (documented deviations from the QME reference code):

* Ties in ranking are broken by lower gallery index (a stable sort of -S); NaN
  scores rank below -inf; -0.0 ties with +0.0.
* ``Threshold@…FAR`` is the k-th largest impostor score (docs/definitions.rst, §2.2). The QME
  reference reads it from scikit-learn's ``roc_curve`` with its default
  ``drop_intermediate=True``, which can report the lower end of the same ROC
  segment; the TAR is identical.
* Open-set: a tie between the genuine column and another enrolled column at
  rank 1 is not a hit; NaN merge scores count as -inf for row maxima and never
  pass a threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..ops import keys as _keys
from . import bootstrap as _bootstrap
from .accumulate import (LOCAL, BlockSource, Candidates as _Candidates, GalleryIndex, Ids,
                         OpenSetSetup, Plan, Reducer, TensorSource, accumulate)
from ..ops.inputs import as_ids, as_probabilities, as_score_matrix, require_finite_score
from .checks import check_evaluation
from .minp import inp_of
from .rprecision import r_precision_of
from .order_stats import ImpostorKeys, _largest_k_at_most, _smallest_k_at_least, select_desc
from .nonfinite import require_finite_counts, warn_matrix_counts
from .orientation import NegatedSource, check_larger_is_better, negate_report_thresholds
from .splits import numpy_splits, qme_splits

MODES = ("general", "sc", "cc")
DEFAULT_FARS = (1e-4, 1e-3, 1e-2)


def _scores(x, name: str, device=None) -> torch.Tensor:
    """A metric's score matrix (:func:`as_score_matrix`), refused when no entry is finite."""
    t = as_score_matrix(x, name, device)
    require_finite_score(t, name)
    return t


def _same_pid_candidates(q_pids: torch.Tensor, g_pids: torch.Tensor) -> _Candidates:
    """Gallery entries sharing each probe's pid (CSR), by grouping the gallery once."""
    return GalleryIndex(g_pids).candidates(q_pids)


# ---------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------
@dataclass
class RankResult:
    """CMC/mAP of one protocol. ``cmc[k-1]`` is the Rank-k identification rate."""

    cmc: np.ndarray  # (max_rank,) float64 fractions over valid probes
    mAP: float
    num_valid: int  # probes with at least one good gallery entry
    num_skipped: int  # probes with none (excluded from the means)
    ap: Optional[np.ndarray] = None  # (P,) per-probe AP, NaN where skipped
    first_pos: Optional[np.ndarray] = None  # (P,) 0-based position of the first hit, -1 where skipped
    cmc_ci: Optional[np.ndarray] = None  # (max_rank, 2) bootstrap interval (ci=...)
    mAP_ci: Optional[tuple] = None
    replicates: Optional[dict] = None  # bootstrap replicates (ci=...)
    mINP: float = 0.0  # mean INP over valid probes (metrics.minp)
    inp: Optional[np.ndarray] = None  # (P,) per-probe INP, NaN where skipped (per_probe)
    mINP_ci: Optional[tuple] = None
    RP: float = 0.0  # mean R-precision over valid probes (metrics.rprecision)
    MAP_at_R: float = 0.0  # mean MAP@R over valid probes
    rp: Optional[np.ndarray] = None  # (P,) per-probe R-precision, NaN where skipped (per_probe)
    map_r: Optional[np.ndarray] = None  # (P,) per-probe MAP@R, NaN where skipped (per_probe)
    RP_ci: Optional[tuple] = None
    MAP_at_R_ci: Optional[tuple] = None

    def __getitem__(self, key):  # dict-style access for convenience
        return getattr(self, key)


def _rank_from_counts(first_pos: np.ndarray, ap: np.ndarray, num_good: np.ndarray,
                      max_rank: int, per_probe: bool,
                      last_pos: Optional[np.ndarray] = None,
                      r_hits: Optional[np.ndarray] = None,
                      map_r: Optional[np.ndarray] = None) -> RankResult:
    valid = num_good > 0
    n_valid = int(valid.sum())
    n_skip = int(valid.size - n_valid)
    if n_valid:
        fp = first_pos[valid]
        hits = np.bincount(np.minimum(fp, max_rank), minlength=max_rank + 1)[:max_rank]
        cmc = np.cumsum(hits).astype(np.float64) / n_valid
        mAP = float(np.sum(ap[valid]) / n_valid)
    else:
        cmc = np.zeros(max_rank, dtype=np.float64)
        mAP = 0.0
    res = RankResult(cmc, mAP, n_valid, n_skip)
    if last_pos is not None:
        inp = inp_of(last_pos, num_good)
        res.mINP = float(np.sum(inp[valid]) / n_valid) if n_valid else 0.0
        if per_probe:
            res.inp = np.where(valid, inp, np.nan)
    if r_hits is not None:
        rp = r_precision_of(r_hits, num_good)
        res.RP = float(np.sum(rp[valid]) / n_valid) if n_valid else 0.0
        res.MAP_at_R = float(np.sum(map_r[valid]) / n_valid) if n_valid else 0.0
        if per_probe:
            res.rp = np.where(valid, rp, np.nan)
            res.map_r = np.where(valid, map_r, np.nan)
    if per_probe:
        res.ap = np.where(valid, ap, np.nan)
        res.first_pos = np.where(valid, first_pos, -1)
    return res


def _validate_ids(P: int, G: int, dev, q_pids, g_pids, q_camids, g_camids, q_clothes,
                  g_clothes, modes: Sequence[str]) -> Ids:
    """The id vectors of a (P, G) matrix on `dev`, checked for the ranking `modes`."""
    qp, gp = as_ids(q_pids, "q_pids", P, dev), as_ids(g_pids, "g_pids", G, dev)
    if (q_camids is None) != (g_camids is None):
        raise ValueError("q_camids/g_camids: give both camera id vectors or neither")
    if (q_clothes is None) != (g_clothes is None):
        raise ValueError("q_clothes/g_clothes: give both clothes id vectors or neither")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode != "general" and (q_clothes is None or q_camids is None):
            raise ValueError(f"mode={mode!r} needs camera ids and clothes ids "
                             "(q_camids, g_camids, q_clothes, g_clothes)")
    qc = as_ids(q_camids, "q_camids", P, dev) if q_camids is not None else None
    gc = as_ids(g_camids, "g_camids", G, dev) if g_camids is not None else None
    qk = as_ids(q_clothes, "q_clothes", P, dev) if q_clothes is not None else None
    gk = as_ids(g_clothes, "g_clothes", G, dev) if g_clothes is not None else None
    return Ids(qp, gp, qc, gc, qk, gk)


def _check_max_rank(max_rank) -> int:
    if not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValueError(f"max_rank: expected an integer >= 1, got {max_rank!r}")
    return int(max_rank)


def _rank_results(counts: tuple, max_rank: int, per_probe: bool) -> list[RankResult]:
    """One RankResult per mode from the per-probe (first_pos, ap, num_good, last_pos,
    r_hits, map_r) arrays, each (n_modes, P)."""
    fp, ap, ng, lp, rh, mr = counts
    return [_rank_from_counts(fp[m], ap[m], ng[m], max_rank, per_probe, lp[m], rh[m], mr[m])
            for m in range(fp.shape[0])]


def rank_metrics(scores, q_pids, g_pids, q_camids=None, g_camids=None, q_clothes=None,
                 g_clothes=None, mode: str = "general", max_rank: int = 20,
                 per_probe: bool = False, ci: Optional[float] = None,
                 n_boot: int = 1000, boot_seed: int = 0,
                 boot_unit: str = "subject") -> RankResult:
    """CMC and mAP of a (P, G) similarity matrix (higher = more alike), docs/definitions.rst, §2.1.

    mode: "general" (good = same pid, other camera; junk = same pid, same camera),
    "cc" (clothes-changing) or "sc" (same clothes). Without camera ids every
    same-pid entry is good and nothing is junk. Probes with no good entry are
    skipped and counted in ``num_skipped``. ``mINP`` is the mean inverse negative
    penalty of fast-reid (per valid probe ``n_good / (p_n + 1)``, ``p_n`` the 0-based
    position after junk removal of the last good entry). ``RP`` and ``MAP_at_R`` are the
    mean R-precision and MAP@R of Musgrave et al. 2020 with R = the probe's number of good
    entries (:mod:`qme_ext.metrics.rprecision`). ``ci=0.95`` also sets ``cmc_ci``,
    ``mAP_ci``, ``mINP_ci``, ``RP_ci`` and ``MAP_at_R_ci``: bootstrap percentile intervals
    (see :func:`evaluate`).
    """
    max_rank = _check_max_rank(max_rank)
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    S = _scores(scores, "scores")
    ids = _validate_ids(*S.shape, S.device, q_pids, g_pids, q_camids, g_camids, q_clothes,
                        g_clothes, [mode])
    parts = accumulate(TensorSource(S), ids, Plan(modes=[mode]))
    res = _rank_results(parts.rank, max_rank, per_probe)[0]
    if boot is not None:
        _bootstrap.rank_intervals(res, parts.rank, ids.q_pids.cpu().numpy(), max_rank, boot)
    return res


def cmc_curve(scores, q_pids, g_pids, q_camids=None, g_camids=None, q_clothes=None,
              g_clothes=None, mode: str = "general", max_rank: int = 20) -> np.ndarray:
    """(max_rank,) CMC: fraction of valid probes whose first good entry is within rank k."""
    return rank_metrics(scores, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode,
                        max_rank).cmc


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------
@dataclass
class TarResult:
    """TAR@FAR per requested FAR (arrays aligned with ``fars``)."""

    fars: np.ndarray
    tar: np.ndarray
    threshold: np.ndarray
    achieved_far: np.ndarray
    num_genuine: int
    num_impostor: int
    convention: str = "qme"
    tar_ci: Optional[np.ndarray] = None  # (F, 2) bootstrap intervals (ci=...)
    threshold_ci: Optional[np.ndarray] = None
    replicates: Optional[dict] = None

    def __getitem__(self, key):
        return getattr(self, key)


def _tar_from_keys(imp: ImpostorKeys, n_gen: int, far_list: list[float],
                   convention: str) -> TarResult:
    """TAR@FAR from the impostor distribution and the genuine keys (docs/definitions.rst, §2.2)."""
    n_imp = imp.num_impostor
    if n_gen == 0:
        raise ValueError("q_pids/g_pids: no genuine pair (no probe shares a pid with the gallery)")
    if n_imp == 0:
        raise ValueError("q_pids/g_pids: no impostor pair (every pair shares a pid)")
    # Each threshold is (key, #impostors with key >= it), or None for "just above
    # the largest impostor" (conservative convention, nothing satisfies the FAR).
    picks: list[Optional[tuple[int, int]]] = []
    if convention == "qme":
        ks = [_smallest_k_at_least(f, n_imp) for f in far_list]
        picks = [(key, n_gt + n_eq) for key, n_gt, n_eq in select_desc(imp, ks)]
    elif convention == "conservative":
        ks = [_largest_k_at_most(f, n_imp) for f in far_list]
        pos = sorted({k for k in ks if k >= 1})
        sel = dict(zip(pos, select_desc(imp, pos)))
        # A tie run straddling k: step up to the next distinct value (rank n_gt).
        up = sorted({sel[k][1] for k in pos if sum(sel[k][1:]) > k and sel[k][1] >= 1})
        above = dict(zip(up, select_desc(imp, up)))
        for k in ks:
            if k >= 1 and sum(sel[k][1:]) <= k:
                picks.append((sel[k][0], sum(sel[k][1:])))
            elif k >= 1 and sel[k][1] >= 1:
                key, n_gt, n_eq = above[sel[k][1]]
                picks.append((key, n_gt + n_eq))
            else:
                picks.append(None)
    else:
        raise ValueError(f"convention: expected 'qme' or 'conservative', got {convention!r}")
    bits, gkeys = imp.bits, imp.genuine_keys
    thresholds, tars, n_imp_ge = [], [], []
    for pick in picks:
        if pick is None:
            max_key, _, n_max = select_desc(imp, [1])[0]
            t = float(np.nextafter(_keys.value_of_key(max_key, bits), np.inf))
            thresholds.append(t)
            # +inf has no successor: "score >= t" still accepts the +inf scores
            at_inf = t == np.inf
            tars.append(np.count_nonzero(gkeys >= np.uint64(max_key) + np.uint64(not at_inf))
                        / n_gen)
            n_imp_ge.append(n_max if at_inf else 0)
        else:
            key, count = pick
            thresholds.append(_keys.value_of_key(key, bits))
            tars.append(np.count_nonzero(gkeys >= np.uint64(key)) / n_gen)
            n_imp_ge.append(count)
    return TarResult(np.asarray(far_list), np.asarray(tars, dtype=np.float64),
                     np.asarray(thresholds, dtype=np.float64),
                     np.asarray(n_imp_ge, dtype=np.float64) / n_imp, n_gen, n_imp, convention)


def tar_at_far(scores, q_pids, g_pids, fars: Sequence[float] = DEFAULT_FARS,
               convention: str = "qme", device=None, ci: Optional[float] = None,
               n_boot: int = 1000, boot_seed: int = 0,
               boot_unit: str = "subject") -> TarResult:
    """TAR at each FAR over all P x G pairs (genuine = same pid), docs/definitions.rst, §2.2.

    convention "qme": t = k-th largest impostor score with k the smallest integer
    >= 1 such that k / N_imp >= far (scikit-learn ``roc_curve`` + first point with
    fpr >= far); "conservative": bob.measure ``far_threshold`` (the lowest impostor
    value whose FAR <= far, runs of ties whole). NaN scores take the minimum
    non-NaN score. Returns tar, threshold, achieved_far per FAR; ``ci=0.95`` adds
    ``tar_ci``/``threshold_ci`` (bootstrap, "qme" convention; see :func:`evaluate`).
    """
    far_list = as_probabilities(fars, "fars")
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    S = _scores(scores, "scores", device)
    P, G = S.shape
    qp, gp = as_ids(q_pids, "q_pids", P, S.device), as_ids(g_pids, "g_pids", G, S.device)
    parts = accumulate(TensorSource(S), Ids(qp, gp), Plan(tar=True, tar_fars=far_list))
    res = _tar_from_keys(parts.impostors, parts.num_genuine, far_list, convention)
    if boot is not None:
        _bootstrap.tar_intervals(res, TensorSource(S), Ids(qp, gp), parts.impostors, far_list,
                                 boot)
    return res


# ---------------------------------------------------------------------------
# open-set identification
# ---------------------------------------------------------------------------
@dataclass
class OpenSetResult:
    """FNIR/TPIR at each FPIR, averaged over enrolment splits (std with ddof 1)."""

    fpirs: np.ndarray  # (F,)
    fnir_mean: np.ndarray  # (F,)
    fnir_std: np.ndarray  # (F,) NaN with a single split
    tpir_mean: np.ndarray
    tpir_std: np.ndarray
    fnir: np.ndarray  # (n_splits, F)
    tpir: np.ndarray  # (n_splits, F)
    threshold: np.ndarray  # (n_splits, F)
    splits: list = field(default_factory=list)  # enrolled subject ids per split
    rank: int = 1
    fnir_mean_ci: Optional[np.ndarray] = None  # (F, 2) bootstrap intervals (ci=...)
    tpir_mean_ci: Optional[np.ndarray] = None
    replicates: Optional[dict] = None

    def __getitem__(self, key):
        return getattr(self, key)


def _draw_splits(subject_ids: np.ndarray, splits, n_splits, keep_fraction, seed, split_rng):
    if splits is not None:
        out = []
        known = set(subject_ids.tolist())
        for i, sp in enumerate(splits):
            arr = np.asarray(sp)
            if arr.ndim != 1 or arr.size == 0:
                raise ValueError(f"splits[{i}]: expected a non-empty 1-D array of enrolled subject ids")
            if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
                raise ValueError(f"splits[{i}]: subject ids must be integers")
            arr = arr.astype(np.int64)
            missing = [v for v in arr.tolist() if v not in known]
            if missing:
                raise ValueError(f"splits[{i}]: ids not among subject_ids, e.g. {missing[:3]}")
            out.append(np.unique(arr))
        if not out:
            raise ValueError("splits: expected at least one split")
        return out
    if not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ValueError(f"n_splits: expected an integer >= 1, got {n_splits!r}")
    if not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"keep_fraction: expected a fraction in (0, 1], got {keep_fraction!r}")
    if split_rng == "qme":
        return qme_splits(subject_ids, n_splits, keep_fraction, seed)
    if split_rng == "numpy":
        return numpy_splits(subject_ids, n_splits, keep_fraction, seed)
    raise ValueError(f"split_rng: expected 'qme' or 'numpy', got {split_rng!r}")


def _sorted_desc_nan_low(values: np.ndarray) -> np.ndarray:
    v = np.where(np.isnan(values), -np.inf, values)
    return np.sort(v)[::-1]


def fnir_at_fpir(merge_scores, q_pids, subject_ids, fpirs: Sequence[float] = DEFAULT_FARS,
                 splits=None, n_splits: int = 10, keep_fraction: float = 0.8, seed: int = 45,
                 split_rng: str = "qme", rank: int = 1, device=None, ci: Optional[float] = None,
                 n_boot: int = 1000, boot_seed: int = 0,
                 boot_unit: str = "subject") -> OpenSetResult:
    """Open-set identification on a (P, S) merge matrix (one column per subject), docs/definitions.rst, §2.3.

    Each split enrols a subset of the subjects (columns). Non-mated probes (pid
    not enrolled) set the threshold t at each FPIR from their row maxima; a mated
    probe is a hit when fewer than ``rank`` other enrolled columns score >= its
    genuine score (rank 1: strictly first) and its genuine score is >= t.
    ``splits`` (list of arrays of enrolled ids) overrides the random draw; the
    default draw ("qme") reproduces numpy.random.seed(seed) + np.random.choice.
    ``ci=0.95`` adds ``fnir_mean_ci``/``tpir_mean_ci`` (bootstrap; see :func:`evaluate`).
    """
    fpir_list = as_probabilities(fpirs, "fpirs")
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank: expected an integer >= 1, got {rank!r}")
    M = _scores(merge_scores, "merge_scores", device)
    P, C = M.shape
    qp = as_ids(q_pids, "q_pids", P, M.device)
    setup = _openset_setup(subject_ids, C, splits, n_splits, keep_fraction, seed, split_rng)
    parts = accumulate(TensorSource(None, M), Ids(qp), Plan(openset=setup))
    res = _openset_result(parts.openset, setup, fpir_list, int(rank))
    if boot is not None:
        _bootstrap.openset_intervals(res, parts.openset, setup, qp.cpu().numpy(), fpir_list,
                                     int(rank), boot)
    return res


def _openset_setup(subject_ids, num_cols: int, splits=None, n_splits: int = 10,
                   keep_fraction: float = 0.8, seed: int = 45,
                   split_rng: str = "qme") -> OpenSetSetup:
    """Subject ids of the merge columns, the enrolment splits and their masks."""
    sid = as_ids(subject_ids, "subject_ids", num_cols, torch.device("cpu")).numpy()
    if np.unique(sid).size != sid.size:
        raise ValueError("subject_ids: must be unique (one merge-score column per subject)")
    split_list = _draw_splits(sid, splits, n_splits, keep_fraction, seed, split_rng)
    enrolled = np.stack([np.isin(sid, sp) for sp in split_list]).astype(np.uint8)
    return OpenSetSetup(sid, split_list, enrolled)


def _openset_result(stats: tuple, setup: OpenSetSetup, fpir_list: list[float],
                    rank: int) -> OpenSetResult:
    """FNIR/TPIR per split and FPIR from the per-probe open-set statistics."""
    max_other, num_ge, gen, gcol = stats
    split_list, enrolled = setup.splits, setup.enrolled
    has = gcol >= 0
    NS, F = len(split_list), len(fpir_list)
    tpir = np.zeros((NS, F))
    thr = np.zeros((NS, F))
    for s in range(NS):
        mated = has & (enrolled[s][np.maximum(gcol, 0)] == 1)
        n_m, n_nm = int(mated.sum()), int((~mated).sum())
        if n_m == 0:
            raise ValueError(f"splits[{s}]: no mated probe (no probe's pid is enrolled)")
        if n_nm == 0:
            raise ValueError(f"splits[{s}]: no non-mated probe; open-set needs probes whose "
                             "subject is not enrolled")
        nm_max = _sorted_desc_nan_low(max_other[s][~mated])
        within_rank = num_ge[s][mated] < rank
        g = gen[mated]
        for f, fpir in enumerate(fpir_list):
            k = int(n_nm * fpir)
            t = nm_max[k - 1] if k >= 1 else nm_max[0] + 1e-8
            thr[s, f] = t
            tpir[s, f] = np.count_nonzero(within_rank & (g >= t)) / n_m
    fnir = 1.0 - tpir
    ddof_std = (lambda a: np.std(a, axis=0, ddof=1)) if NS > 1 else (lambda a: np.full(F, np.nan))
    return OpenSetResult(np.asarray(fpir_list), fnir.mean(axis=0), ddof_std(fnir),
                         tpir.mean(axis=0), ddof_std(tpir), fnir, tpir, thr, split_list, int(rank))


# ---------------------------------------------------------------------------
# curves (ROC, DET, EER) at exact distinct thresholds
# ---------------------------------------------------------------------------
class PairKeys(NamedTuple):
    """The keys of every score of a (P, G) matrix, for sorting-based curves and reports."""

    keys: np.ndarray  # (P*G,) uint64, row-major, NaN -> the minimum non-NaN score
    gen_flat: np.ndarray  # (N_gen,) flat indices of the genuine pairs
    q_pids: np.ndarray  # (P,) int64
    G: int
    bits: int


def _pair_keys(scores, q_pids, g_pids, device=None) -> PairKeys:
    S = _scores(scores, "scores", device)
    P, G = S.shape
    qp, gp = as_ids(q_pids, "q_pids", P, S.device), as_ids(g_pids, "g_pids", G, S.device)
    cand = _same_pid_candidates(qp, gp)
    bits = 64 if S.dtype == torch.float64 else 32
    allv = S.to(torch.float64).reshape(-1).cpu().numpy()
    finite = allv[~np.isnan(allv)]
    fill = finite.min() if finite.size else 0.0
    allk = _keys.keys(np.where(np.isnan(allv), fill, allv), bits)
    gen_flat = (cand.probe * G + cand.index).cpu().numpy()
    return PairKeys(allk, gen_flat, qp.cpu().numpy(), G, bits)


def _counts_of_keys(pk: PairKeys):
    """Distinct score values (descending) with genuine and impostor counts at each.

    Sorts the keys of all P x G scores (O(PG log PG)); meant for curves and reports.
    """
    uk, n_all = np.unique(pk.keys, return_counts=True)
    gk, n_g = np.unique(pk.keys[pk.gen_flat], return_counts=True)
    n_gen = np.zeros_like(n_all)
    n_gen[np.searchsorted(uk, gk)] = n_g
    n_imp = n_all - n_gen
    if n_gen.sum() == 0 or n_imp.sum() == 0:
        raise ValueError("q_pids/g_pids: need at least one genuine and one impostor pair")
    values = _keys.values_of_keys(uk[::-1], pk.bits)
    return values, n_gen[::-1], n_imp[::-1]


def _distinct_counts(scores, q_pids, g_pids, device=None):
    """:func:`_counts_of_keys` of a (P, G) matrix and its ids."""
    return _counts_of_keys(_pair_keys(scores, q_pids, g_pids, device))


def roc(scores, q_pids, g_pids, device=None):
    """ROC at every distinct score t (descending): (far, tar, thresholds), each (T,).

    far = #{impostor >= t} / N_imp, tar = #{genuine >= t} / N_gen.
    """
    values, n_gen, n_imp = _distinct_counts(scores, q_pids, g_pids, device)
    far = np.cumsum(n_imp) / n_imp.sum()
    tar = np.cumsum(n_gen) / n_gen.sum()
    return far, tar, values


def det(scores, q_pids, g_pids, device=None):
    """DET: (far, frr) at every distinct threshold; plot on probit axes (Phi^-1)."""
    far, tar, _ = roc(scores, q_pids, g_pids, device)
    return far, 1.0 - tar


class EerResult(tuple):
    """``(eer, threshold)`` (unpacks as the plain tuple) with ``eer_ci`` = (lo, hi) and
    ``replicates`` (n_boot,) of the bootstrap (``eer(..., ci=...)``)."""

    def __new__(cls, point: tuple, eer_ci: tuple, replicates: np.ndarray):
        self = super().__new__(cls, point)
        self.eer_ci = (float(eer_ci[0]), float(eer_ci[1]))
        self.replicates = replicates
        return self


def midpoint_candidates(values: np.ndarray, n_gen: np.ndarray, n_imp: np.ndarray) -> tuple:
    """bob.measure's candidate thresholds of distinct scores ``values`` (T,) descending
    with counts ``n_gen``, ``n_imp`` (T,): (thresholds (T+1,), #{impostor >= t} (T+1,),
    #{genuine < t} (T+1,)), ascending."""
    asc = values[::-1]
    N_gen = int(n_gen.sum())
    # candidates in ascending order: just below the minimum, midpoints (or the upper value
    # where the midpoint is not strictly between, e.g. next to an infinity), just above
    # the maximum; each carries #{impostor >= t} and #{genuine < t}
    lo, hi = asc[:-1], asc[1:]
    with np.errstate(over="ignore", invalid="ignore"):
        mid = lo + (hi - lo) / 2.0
    mid = np.where(np.isfinite(mid) & (lo < mid) & (mid <= hi), mid, hi)
    cand_t = np.concatenate([[np.nextafter(asc[0], -np.inf)], mid,
                             [np.nextafter(asc[-1], np.inf)]])
    cand_imp = np.concatenate([np.cumsum(n_imp)[::-1], [0]])
    cand_gen = np.concatenate([[0], N_gen - np.cumsum(n_gen)[::-1][1:], [N_gen]])
    return cand_t, cand_imp, cand_gen


def eer(scores, q_pids, g_pids, device=None, ci: Optional[float] = None, n_boot: int = 1000,
        boot_seed: int = 0, boot_unit: str = "subject") -> tuple[float, float]:
    """Equal error rate, bob.measure style: among midpoint thresholds, the one with
    the smallest |FAR - FRR|; returns ((FAR + FRR) / 2, threshold).

    ``ci=0.95`` returns an :class:`EerResult` (still ``eer, thr = ...``) with ``eer_ci``:
    the percentile interval of the EER over bootstrap replicates of the probe subjects
    (``boot_unit="probe"``: probes), each equal to ``eer`` of the explicitly resampled
    matrix (the replicates' thresholds are not reported: a resample moves the midpoints).
    """
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    pk = _pair_keys(scores, q_pids, g_pids, device)
    values, n_gen, n_imp = _counts_of_keys(pk)
    N_gen, N_imp = int(n_gen.sum()), int(n_imp.sum())
    cand_t, cand_imp, cand_gen = midpoint_candidates(values, n_gen, n_imp)
    far, frr = cand_imp / N_imp, cand_gen / N_gen
    # |FAR - FRR| compared exactly (integers) among the near-minimal candidates, so that
    # float rounding never decides a tie: ties go to the lowest threshold
    approx = np.abs(far - frr)
    near = np.flatnonzero(approx <= approx.min() + 1e-12)
    exact = [abs(int(cand_imp[j]) * N_gen - int(cand_gen[j]) * N_imp) for j in near]
    i = int(near[int(np.argmin(exact))])
    point = (float((far[i] + frr[i]) / 2.0), float(cand_t[i]))
    if boot is None:
        return point
    W = _bootstrap.Weights.of(boot, pk.q_pids)
    reps = _bootstrap.eer_replicates(W, pk.keys, pk.gen_flat, pk.G)
    return EerResult(point, boot.interval(reps), reps)


def roc_far_grid(num_impostors: int, points: int = 64) -> list:
    """Log-spaced FARs from 1 / N_imp to 1: where a sampled ROC is read."""
    lo = 1.0 / max(int(num_impostors), 1)
    return sorted(set(np.logspace(np.log10(lo), 0.0, points).tolist()))


def histogram_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """``bins`` + 1 shared linear edges over [lo, hi] (``np.histogram_bin_edges`` rule;
    [0, 1] when there is no finite score)."""
    return np.histogram_bin_edges([lo, hi] if lo <= hi else [0.0, 1.0], bins=bins)


def _curve_bands(source: BlockSource, ids: Ids, parts, boot: _bootstrap.Bootstrap,
                 points: int = 32) -> dict:
    """Bootstrap bands of the plot curves from the partial states of a "general" ranking
    and TAR pass: ``roc_band`` = (far, TAR lo, TAR hi) pointwise at `points` log-spaced
    FARs, ``cmc_ci`` (20, 2) with the intervals of :func:`evaluate`, and the point ``cmc``
    (20,) of the same pass."""
    grid = roc_far_grid(parts.impostors.num_impostor, points)
    tr = _tar_from_keys(parts.impostors, parts.num_genuine, grid, "qme")
    _bootstrap.tar_intervals(tr, source, ids, parts.impostors, grid, boot)
    res = _rank_results(parts.rank, 20, False)[0]
    _bootstrap.rank_intervals(res, parts.rank, ids.q_pids.cpu().numpy(), 20, boot)
    return {"roc_band": (np.asarray(grid), tr.tar_ci[:, 0], tr.tar_ci[:, 1]),
            "cmc_ci": res.cmc_ci, "cmc": res.cmc}


def curve_bands(scores, q_pids, g_pids, q_camids=None, g_camids=None, ci: float = 0.95,
                n_boot: int = 1000, boot_seed: int = 0, boot_unit: str = "subject",
                points: int = 32) -> dict:
    """Pointwise bootstrap bands for the ROC/DET (``roc_band`` = (far (F,), TAR lo (F,),
    TAR hi (F,)) at `points` log-spaced FARs; DET: FRR = 1 - TAR) and error bars for the
    CMC (``cmc_ci`` (20, 2), ranks 1..20, beside the point ``cmc``) of a (P, G) score
    matrix; the same replicates as :func:`evaluate` with these options."""
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    S = _scores(scores, "scores")
    ids = _validate_ids(*S.shape, S.device, q_pids, g_pids, q_camids, g_camids, None, None,
                        ("general",))
    source = TensorSource(S)
    parts = accumulate(source, ids, Plan(("general",), tar=True), LOCAL)
    return _curve_bands(source, ids, parts, boot, points)


def _curves_source(source: BlockSource, q_pids, q_camids, g_pids, g_camids, points: int = 64,
                   bins: int = 60, boot: Optional[_bootstrap.Bootstrap] = None) -> dict:
    """Plot curves of a block source in bounded memory (``qme-ext evaluate --max-memory
    --plots``): ``roc`` = (far, tar) and ``det`` = (far, frr) at :func:`roc_far_grid`
    (each point exact: the k-th largest impostor score as threshold, docs/definitions.rst, §2.2), ``cmc``
    to rank 20, and ``hist`` = (edges, genuine counts, impostor counts) of the finite
    scores on shared linear bins (two more passes over the source)."""
    ids = _validate_ids(source.num_rows, source.num_cols, source.device, q_pids, g_pids,
                        q_camids, g_camids, None, None, ("general",))
    parts = accumulate(source, ids, Plan(("general",), tar=True), LOCAL)
    cmc = _rank_results(parts.rank, 20, False)[0].cmc
    tr = _tar_from_keys(parts.impostors, parts.num_genuine,
                        roc_far_grid(parts.impostors.num_impostor, points), "qme")
    gallery = GalleryIndex(ids.g_pids)

    def row_slices(t: torch.Tensor, rows: int = 256):
        # a few rows at a time: the temporaries stay far below the block the budget allows
        for r in range(0, t.shape[0], rows):
            yield t[r:r + rows]

    def as_numpy(t: torch.Tensor) -> np.ndarray:
        # a view for float32/float64 CPU blocks; np.histogram with explicit edges drops
        # NaN and +-inf itself, so nothing is filtered or widened here
        wide = t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)
        return wide.cpu().numpy()

    lo, hi = np.inf, -np.inf
    for blk in source.blocks(scores=True):
        for v in row_slices(blk.scores):
            f = v[torch.isfinite(v)]
            if f.numel():
                lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
    edges = histogram_edges(lo, hi, bins)
    all_counts = np.zeros(bins, dtype=np.int64)
    gen_counts = np.zeros(bins, dtype=np.int64)
    for blk in source.blocks(scores=True):
        cand = gallery.candidates(ids.q_pids[blk.rows])
        for v in row_slices(blk.scores):
            all_counts += np.histogram(as_numpy(v), edges)[0]
        gen_counts += np.histogram(as_numpy(blk.scores[cand.probe, cand.index]), edges)[0]
    out = {"roc": (tr.achieved_far, tr.tar), "det": (tr.achieved_far, 1.0 - tr.tar),
           "cmc": cmc, "hist": (edges, gen_counts, all_counts - gen_counts)}
    if boot is not None:  # bands from the same partial states (one more select pass)
        out.update(_curve_bands(source, ids, parts, boot))
    return out


# ---------------------------------------------------------------------------
# the QME reference protocol in one call
# the protocols evaluate() knows; "qme" is docs/definitions.rst, §2 (the paper's reference keys)
PROTOCOLS = ("qme",)
# ---------------------------------------------------------------------------
def _pct_key(prefix: str, rate: float, suffix: str) -> str:
    return f"{prefix}@{rate:.2%}{suffix}"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")


def evaluate(score_mat, merge_score_mat, q_pids, q_camids, q_clothes_ids, g_pids, g_camids,
             g_clothes_ids, unique_g_pids, protocol: str = "qme", seed: int = 45,
             device=None, fars: Sequence[float] = DEFAULT_FARS,
             block_rows: Optional[int] = None, ci: Optional[float] = None,
             n_boot: int = 1000, boot_seed: int = 0,
             boot_unit: str = "subject", larger_is_better: bool = True) -> dict[str, float]:
    """Every metric of the QME reference ``test_score`` with its exact keys (docs/definitions.rst, §2).

    One ranking pass gives GR/SC/CC Rank-1/5/10/20, mAP, mINP, R-precision (``<mode>_RP``)
    and MAP@R (``<mode>_MAP@R``; :mod:`qme_ext.metrics.rprecision`), the radix select gives
    TAR@{0.01,0.1,1}%FAR and thresholds, one open-set pass gives FNIR/TPIR@FPIR
    over 10 enrolment splits (mean, ``_std`` with ddof 1) and the thresholds.

    ``block_rows`` walks the matrices in blocks of that many probes (views, no
    copies; default: one block). Results do not depend on it, bit for bit; it
    exists for testing and to bound the kernels' per-call work. For matrices
    larger than memory see :func:`evaluate_file`; for several processes,
    :func:`qme_ext.distributed.evaluate`.

    ``ci=0.95`` adds ``<key>_ci`` = (lo, hi) after each metric: a percentile interval
    from ``n_boot`` weighted bootstrap replicates over probe subjects (``boot_unit=
    "probe"``: probe rows), seeded by ``boot_seed``; the point values are unchanged and
    the result is a :class:`qme_ext.bootstrap.BootReport` (see :func:`compare`).

    ``larger_is_better=False``: the matrices hold distances (lower = more alike, e.g.
    torchreid's ``distmat``); the report is that of their negation, thresholds in
    distance units (:mod:`qme_ext.metrics.orientation`).
    """
    _check_protocol(protocol)
    check_larger_is_better(larger_is_better)
    boot = _bootstrap.options(ci, n_boot, boot_seed, boot_unit)
    S = as_score_matrix(score_mat, "score_mat", device)
    M = as_score_matrix(merge_score_mat, "merge_score_mat", S.device)
    if M.shape[0] != S.shape[0]:
        raise ValueError(f"merge_score_mat: expected {S.shape[0]} rows (one per probe, like "
                         f"score_mat), got shape {tuple(M.shape)}")
    check_evaluation(q_pids, g_pids, unique_g_pids, seed, tuple(S.shape), M.shape[1])
    # warn_nonfinite=True: a NonFiniteScoreWarning when NaN/inf entries were given and a
    # ValueError for a matrix with no finite one, from the counts of the passes themselves
    # (no extra read of either matrix)
    return _evaluate_source(TensorSource(S, M, block_rows), q_pids, q_camids, q_clothes_ids,
                            g_pids, g_camids, g_clothes_ids, unique_g_pids, seed=seed, fars=fars,
                            boot=boot, larger_is_better=larger_is_better, warn_nonfinite=True)


def _evaluate_source(source: BlockSource, q_pids, q_camids, q_clothes_ids, g_pids, g_camids,
                     g_clothes_ids, unique_g_pids, *, seed: int = 45,
                     fars: Sequence[float] = DEFAULT_FARS, red: Reducer = LOCAL,
                     shard: str = "rows", col_offset: int = 0,
                     merge_col_offset: int = 0,
                     boot: Optional[_bootstrap.Bootstrap] = None,
                     larger_is_better: bool = True, warn_nonfinite: bool = False,
                     _stacklevel: int = 4) -> dict[str, float]:
    """The report of :func:`evaluate` for a block source (ids are the local ones:
    this process's probes and gallery columns; `red` combines processes;
    ``larger_is_better=False``: the source holds distances, negated block by block).
    ``warn_nonfinite``: give :func:`evaluate`'s NonFiniteScoreWarning (row shards) from
    the counts of the passes, pointing at the caller of the caller, and its ValueError for
    a matrix with no finite score."""
    if not check_larger_is_better(larger_is_better):
        out = _evaluate_source(NegatedSource(source), q_pids, q_camids, q_clothes_ids, g_pids,
                               g_camids, g_clothes_ids, unique_g_pids, seed=seed, fars=fars,
                               red=red, shard=shard, col_offset=col_offset,
                               merge_col_offset=merge_col_offset, boot=boot,
                               warn_nonfinite=warn_nonfinite, _stacklevel=_stacklevel + 1)
        return negate_report_thresholds(out)
    far_list = as_probabilities(fars, "fars")
    ids = _validate_ids(source.num_rows, source.num_cols, source.device, q_pids, g_pids,
                        q_camids, g_camids, q_clothes_ids, g_clothes_ids, MODES)
    cpu = torch.device("cpu")
    uniq = as_ids(unique_g_pids, "unique_g_pids", source.merge_cols, cpu).numpy()
    q_all = ids.q_pids.cpu().numpy()
    if shard == "columns":
        uniq = red.cat(uniq)
    else:
        q_all = red.cat(q_all)
    setup = _openset_setup(uniq, uniq.size, None, 10, 0.8, seed, "qme")
    plan = Plan(MODES, tar=True, openset=setup, shard=shard, col_offset=col_offset,
                merge_col_offset=merge_col_offset, tar_fars=far_list)
    parts = accumulate(source, ids, plan, red)
    if warn_nonfinite and parts.nonfinite is not None:
        require_finite_counts(parts.nonfinite, {
            "score_mat": (source.num_rows, source.num_cols),
            "merge_score_mat": (source.num_rows, source.merge_cols)})
        warn_matrix_counts(parts.nonfinite, _stacklevel)
    out: dict[str, float] = {}
    for name, res in zip(("GR", "SC", "CC"), _rank_results(parts.rank, 20, False)):
        for k in (1, 5, 10, 20):
            out[f"{name}_top{k}"] = float(res.cmc[k - 1])
        out[f"{name}_mAP"] = res.mAP
        out[f"{name}_mINP"] = res.mINP
        out[f"{name}_RP"] = res.RP
        out[f"{name}_MAP@R"] = res.MAP_at_R
    tr = _tar_from_keys(parts.impostors, parts.num_genuine, far_list, "qme")
    for f, t in zip(far_list, tr.tar):
        out[_pct_key("TAR", f, "FAR")] = float(t)
    for f, t in zip(far_list, tr.threshold):
        out[_pct_key("Threshold", f, "FAR")] = float(t)
    osr = _openset_result(parts.openset, setup, far_list, 1)
    for f, v in zip(far_list, osr.tpir_mean):
        out[_pct_key("TPIR", f, "FPIR")] = float(v)
    for f, v in zip(far_list, osr.fnir_mean):
        out[_pct_key("FNIR", f, "FPIR")] = float(v)
    for f, v in zip(far_list, osr.threshold.mean(axis=0)):
        out[_pct_key("FNIR", f, "FPIR") + "_threshold"] = float(v)
    n_keep = int(len(uniq) * 0.8)
    out["num_probe_templates"] = float(q_all.size)
    out["num_probe_subjects"] = float(np.unique(q_all).size)
    out["num_gallery_subjects"] = float(len(uniq))
    out["num_galley1_templates"] = float(n_keep)
    out["num_gallary1_subjects"] = float(n_keep)
    for f, v in zip(far_list, osr.tpir_std):
        out[_pct_key("TPIR", f, "FPIR") + "_std"] = float(v)
    for f, v in zip(far_list, osr.fnir_std):
        out[_pct_key("FNIR", f, "FPIR") + "_std"] = float(v)
    if boot is not None:  # issue 12: intervals from the same partial states
        reps = _bootstrap.report_replicates(parts, source, ids, setup, far_list, boot, _pct_key,
                                            red, shard)
        out = _bootstrap.add_intervals(out, reps, boot, _bootstrap.probe_fingerprint(q_all))
    return out


def compare(report_a, report_b, keys: Optional[Sequence[str]] = None,
            ci: Optional[float] = None) -> dict:
    """Paired bootstrap difference ``a - b`` of two ``evaluate(..., ci=...)`` reports of
    the same probes: ``{key: {"diff", "ci", "p_value"}}`` (:func:`qme_ext.bootstrap.compare`)."""
    return _bootstrap.compare(report_a, report_b, keys, ci)
