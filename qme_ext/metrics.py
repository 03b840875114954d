"""The evaluation engine: Rank-k/CMC, mAP, TAR@FAR, FNIR@FPIR, ROC/DET/EER (SPEC 2).

Every metric is computed exactly by one streaming kernel pass per metric family
(CPU threads or CUDA), with integer counts deciding every result:

* ranking: ``qme_ext::rank_counts`` counts, per probe, the entries ranked before
  each good gallery entry (no sort); the three protocols (general, SC, CC) share
  one pass in :func:`evaluate`;
* verification: ``qme_ext::key_histogram`` radix-selects the impostor order
  statistics, genuine pairs being gathered from the id vectors (no P x G mask);
* open-set: ``qme_ext::openset_stats`` gives every split's statistics in one pass.

Inputs are numpy arrays or torch tensors (CPU or CUDA), scores float16, bfloat16,
float32 or float64, ids integer (or float holding integers). Results are Python
floats / numpy arrays. ``qme_ext.reference`` holds the literal (sort-based) numpy
definitions these functions are tested against.

Conventions and choices (documented deviations from the QME reference code):

* Ties in ranking are broken by lower gallery index (a stable sort of -S); NaN
  scores rank below -inf; -0.0 ties with +0.0.
* ``Threshold@…FAR`` is the k-th largest impostor score (SPEC 2.2). The QME
  reference reads it from scikit-learn's ``roc_curve`` with its default
  ``drop_intermediate=True``, which can report the lower end of the same ROC
  segment; the TAR is identical.
* Open-set: a tie between the genuine column and another enrolled column at
  rank 1 is not a hit; NaN merge scores count as -inf for row maxima and never
  pass a threshold.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from . import _keys
from ._inputs import as_ids, as_probabilities, as_score_matrix
from ._ops import openset_stats, rank_counts
from ._select import build_impostor_keys, select_desc
from .reference.metrics import numpy_splits, qme_splits

MODES = ("general", "sc", "cc")
DEFAULT_FARS = (1e-4, 1e-3, 1e-2)


# ---------------------------------------------------------------------------
# candidates: same-pid gallery entries of every probe, as CSR
# ---------------------------------------------------------------------------
@dataclass
class _Candidates:
    offsets: torch.Tensor  # (P + 1,) int64
    index: torch.Tensor  # (nnz,) int64 gallery columns, ascending within a probe
    probe: torch.Tensor  # (nnz,) int64 probe of each candidate
    max_per_probe: int


def _same_pid_candidates(q_pids: torch.Tensor, g_pids: torch.Tensor) -> _Candidates:
    """Gallery entries sharing each probe's pid, by grouping the gallery once."""
    dev = q_pids.device
    P = q_pids.shape[0]
    order = torch.argsort(g_pids, stable=True)
    uniq, counts = torch.unique_consecutive(g_pids[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.searchsorted(uniq, q_pids).clamp(max=uniq.shape[0] - 1)
    found = uniq[pos] == q_pids
    cnt = torch.where(found, counts[pos], torch.zeros_like(pos))
    offsets = torch.zeros(P + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(cnt, 0)
    probe = torch.repeat_interleave(torch.arange(P, device=dev), cnt)
    within = torch.arange(probe.shape[0], device=dev) - offsets[:-1][probe]
    index = order[starts[pos][probe] + within]
    max_per = int(cnt.max().item()) if P else 0
    return _Candidates(offsets, index.contiguous(), probe, max_per)


def _mode_flags(cand: _Candidates, modes: Sequence[str], q_camids, g_camids, q_clothes,
                g_clothes) -> torch.Tensor:
    """(nnz,) uint8: bit 2m = good, bit 2m+1 = junk for modes[m] (SPEC 2.1)."""
    nnz = cand.index.shape[0]
    dev = cand.index.device
    flags = torch.zeros(nnz, dtype=torch.uint8, device=dev)
    ones = torch.ones(nnz, dtype=torch.bool, device=dev)
    same_cam = (g_camids[cand.index] == q_camids[cand.probe]) if q_camids is not None else ~ones
    same_clo = (g_clothes[cand.index] == q_clothes[cand.probe]) if q_clothes is not None else None
    for m, mode in enumerate(modes):
        if mode == "general":
            good, junk = ~same_cam, same_cam
        elif mode == "cc":
            good, junk = ~same_cam & ~same_clo, same_cam | same_clo
        else:  # sc
            good, junk = ~same_cam & same_clo, same_cam | ~same_clo
        flags |= good.to(torch.uint8) << (2 * m)
        flags |= junk.to(torch.uint8) << (2 * m + 1)
    return flags


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

    def __getitem__(self, key):  # dict-style access for convenience
        return getattr(self, key)


def _rank_from_counts(first_pos: np.ndarray, ap: np.ndarray, num_good: np.ndarray,
                      max_rank: int, per_probe: bool) -> RankResult:
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
    if per_probe:
        res.ap = np.where(valid, ap, np.nan)
        res.first_pos = np.where(valid, first_pos, -1)
    return res


def _prepare_rank_inputs(scores, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes,
                         modes: Sequence[str], device=None):
    S = as_score_matrix(scores, "scores", device)
    P, G = S.shape
    dev = S.device
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
    cand = _same_pid_candidates(qp, gp)
    flags = _mode_flags(cand, modes, qc, gc, qk, gk)
    return S, cand, flags


def _check_max_rank(max_rank) -> int:
    if not isinstance(max_rank, (int, np.integer)) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValueError(f"max_rank: expected an integer >= 1, got {max_rank!r}")
    return int(max_rank)


def _rank_multi(S, cand, flags, modes, max_rank, per_probe) -> list[RankResult]:
    fp, ap, ng = rank_counts(S, cand.offsets, cand.index, flags, len(modes), cand.max_per_probe)
    fp, ap, ng = fp.cpu().numpy(), ap.cpu().numpy(), ng.cpu().numpy()
    return [_rank_from_counts(fp[m], ap[m], ng[m], max_rank, per_probe) for m in range(len(modes))]


def rank_metrics(scores, q_pids, g_pids, q_camids=None, g_camids=None, q_clothes=None,
                 g_clothes=None, mode: str = "general", max_rank: int = 20,
                 per_probe: bool = False) -> RankResult:
    """CMC and mAP of a (P, G) similarity matrix (higher = more alike), SPEC 2.1.

    mode: "general" (good = same pid, other camera; junk = same pid, same camera),
    "cc" (clothes-changing) or "sc" (same clothes). Without camera ids every
    same-pid entry is good and nothing is junk. Probes with no good entry are
    skipped and counted in ``num_skipped``.
    """
    max_rank = _check_max_rank(max_rank)
    S, cand, flags = _prepare_rank_inputs(scores, q_pids, g_pids, q_camids, g_camids, q_clothes,
                                          g_clothes, [mode])
    return _rank_multi(S, cand, flags, [mode], max_rank, per_probe)[0]


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

    def __getitem__(self, key):
        return getattr(self, key)


def _genuine_values(S: torch.Tensor, cand: _Candidates) -> np.ndarray:
    return S[cand.probe, cand.index].to(torch.float64).cpu().numpy()


def _smallest_k_at_least(far: float, n: int) -> int:
    """Smallest k >= 1 with k / n >= far, in float64 like the reference's fpr."""
    k = max(1, int(np.ceil(far * n)))
    while k > 1 and (k - 1) / n >= far:
        k -= 1
    while k < n and k / n < far:
        k += 1
    return k


def _largest_k_at_most(far: float, n: int) -> int:
    """Largest k >= 0 with k / n <= far."""
    k = int(np.floor(far * n))
    while k > 0 and k / n > far:
        k -= 1
    while k < n and (k + 1) / n <= far:
        k += 1
    return k


def _tar_from_keys(S: torch.Tensor, gen_values: np.ndarray, far_list: list[float],
                   convention: str) -> TarResult:
    imp = build_impostor_keys(S, gen_values)
    n_gen, n_imp = int(gen_values.size), imp.num_impostor
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
            max_key = select_desc(imp, [1])[0][0]
            thresholds.append(float(np.nextafter(_keys.value_of_key(max_key, bits), np.inf)))
            tars.append(np.count_nonzero(gkeys > np.uint64(max_key)) / n_gen)
            n_imp_ge.append(0)
        else:
            key, count = pick
            thresholds.append(_keys.value_of_key(key, bits))
            tars.append(np.count_nonzero(gkeys >= np.uint64(key)) / n_gen)
            n_imp_ge.append(count)
    return TarResult(np.asarray(far_list), np.asarray(tars, dtype=np.float64),
                     np.asarray(thresholds, dtype=np.float64),
                     np.asarray(n_imp_ge, dtype=np.float64) / n_imp, n_gen, n_imp, convention)


def tar_at_far(scores, q_pids, g_pids, fars: Sequence[float] = DEFAULT_FARS,
               convention: str = "qme", device=None) -> TarResult:
    """TAR at each FAR over all P x G pairs (genuine = same pid), SPEC 2.2.

    convention "qme": t = k-th largest impostor score with k the smallest integer
    >= 1 such that k / N_imp >= far (scikit-learn ``roc_curve`` + first point with
    fpr >= far); "conservative": bob.measure ``far_threshold`` (the lowest impostor
    value whose FAR <= far, runs of ties whole). NaN scores take the minimum
    non-NaN score. Returns tar, threshold, achieved_far per FAR.
    """
    far_list = as_probabilities(fars, "fars")
    S = as_score_matrix(scores, "scores", device)
    P, G = S.shape
    qp, gp = as_ids(q_pids, "q_pids", P, S.device), as_ids(g_pids, "g_pids", G, S.device)
    cand = _same_pid_candidates(qp, gp)
    return _tar_from_keys(S, _genuine_values(S, cand), far_list, convention)


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
                 split_rng: str = "qme", rank: int = 1, device=None) -> OpenSetResult:
    """Open-set identification on a (P, S) merge matrix (one column per subject), SPEC 2.3.

    Each split enrols a subset of the subjects (columns). Non-mated probes (pid
    not enrolled) set the threshold t at each FPIR from their row maxima; a mated
    probe is a hit when fewer than ``rank`` other enrolled columns score >= its
    genuine score (rank 1: strictly first) and its genuine score is >= t.
    ``splits`` (list of arrays of enrolled ids) overrides the random draw; the
    default draw ("qme") reproduces numpy.random.seed(seed) + np.random.choice.
    """
    fpir_list = as_probabilities(fpirs, "fpirs")
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank: expected an integer >= 1, got {rank!r}")
    M = as_score_matrix(merge_scores, "merge_scores", device)
    P, C = M.shape
    dev = M.device
    qp = as_ids(q_pids, "q_pids", P, dev)
    sid = as_ids(subject_ids, "subject_ids", C, torch.device("cpu")).numpy()
    if np.unique(sid).size != sid.size:
        raise ValueError("subject_ids: must be unique (one merge-score column per subject)")
    split_list = _draw_splits(sid, splits, n_splits, keep_fraction, seed, split_rng)
    order = np.argsort(sid, kind="stable")
    qpn = qp.cpu().numpy()
    pos = np.clip(np.searchsorted(sid[order], qpn), 0, C - 1)
    gcol = np.where(sid[order][pos] == qpn, order[pos], -1).astype(np.int64)
    enrolled = np.stack([np.isin(sid, sp) for sp in split_list]).astype(np.uint8)
    max_other, num_ge = openset_stats(M, torch.from_numpy(gcol).to(dev),
                                      torch.from_numpy(enrolled).to(dev))
    max_other, num_ge = max_other.cpu().numpy(), num_ge.cpu().numpy()
    rows = np.arange(P)
    gen = np.full(P, np.nan)
    has = gcol >= 0
    if has.any():
        gen[has] = M[torch.from_numpy(rows[has]).to(dev), torch.from_numpy(gcol[has]).to(dev)] \
            .to(torch.float64).cpu().numpy()
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
def _distinct_counts(scores, q_pids, g_pids, device=None):
    """Distinct score values (descending) with genuine and impostor counts at each.

    Sorts the keys of all P x G scores (O(PG log PG)); meant for curves and reports.
    """
    S = as_score_matrix(scores, "scores", device)
    P, G = S.shape
    qp, gp = as_ids(q_pids, "q_pids", P, S.device), as_ids(g_pids, "g_pids", G, S.device)
    cand = _same_pid_candidates(qp, gp)
    bits = 64 if S.dtype == torch.float64 else 32
    allv = S.to(torch.float64).reshape(-1).cpu().numpy()
    genv = _genuine_values(S, cand)
    finite = allv[~np.isnan(allv)]
    fill = finite.min() if finite.size else 0.0
    allk = _keys.keys(np.where(np.isnan(allv), fill, allv), bits)
    genk = _keys.keys(np.where(np.isnan(genv), fill, genv), bits)
    uk, n_all = np.unique(allk, return_counts=True)
    gk, n_g = np.unique(genk, return_counts=True)
    n_gen = np.zeros_like(n_all)
    n_gen[np.searchsorted(uk, gk)] = n_g
    n_imp = n_all - n_gen
    if n_gen.sum() == 0 or n_imp.sum() == 0:
        raise ValueError("q_pids/g_pids: need at least one genuine and one impostor pair")
    values = np.array([_keys.value_of_key(k, bits) for k in uk[::-1]])
    return values, n_gen[::-1], n_imp[::-1]


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


def eer(scores, q_pids, g_pids, device=None) -> tuple[float, float]:
    """Equal error rate, bob.measure style: among midpoint thresholds, the one with
    the smallest |FAR - FRR|; returns ((FAR + FRR) / 2, threshold)."""
    values, n_gen, n_imp = _distinct_counts(scores, q_pids, g_pids, device)
    asc = values[::-1]
    imp_ge = np.cumsum(n_imp)[::-1] / n_imp.sum()  # FAR at t = asc[i]
    gen_ge = np.cumsum(n_gen)[::-1] / n_gen.sum()
    # candidates in ascending order: below the minimum, midpoints, above the maximum
    cand_t = np.concatenate([[asc[0] - 1.0], (asc[:-1] + asc[1:]) / 2, [asc[-1] + 1.0]])
    cand_far = np.concatenate([[1.0], imp_ge[1:], [0.0]])
    cand_frr = np.concatenate([[0.0], 1.0 - gen_ge[1:], [1.0]])
    i = int(np.argmin(np.abs(cand_far - cand_frr)))
    return float((cand_far[i] + cand_frr[i]) / 2), float(cand_t[i])


# ---------------------------------------------------------------------------
# the QME reference protocol in one call
# the protocols evaluate() knows; "qme" is SPEC §2 (the paper's reference keys)
PROTOCOLS = ("qme",)
# ---------------------------------------------------------------------------
def _pct_key(prefix: str, rate: float, suffix: str) -> str:
    return f"{prefix}@{rate:.2%}{suffix}"


def evaluate(score_mat, merge_score_mat, q_pids, q_camids, q_clothes_ids, g_pids, g_camids,
             g_clothes_ids, unique_g_pids, protocol: str = "qme", seed: int = 45,
             device=None, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, float]:
    """Every metric of the QME reference ``test_score`` with its exact keys (SPEC 2).

    One ranking pass gives GR/SC/CC Rank-1/5/10/20 and mAP, the radix select gives
    TAR@{0.01,0.1,1}%FAR and thresholds, one open-set pass gives FNIR/TPIR@FPIR
    over 10 enrolment splits (mean, ``_std`` with ddof 1) and the thresholds.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")
    S, cand, flags = _prepare_rank_inputs(score_mat, q_pids, g_pids, q_camids, g_camids,
                                          q_clothes_ids, g_clothes_ids, MODES, device)
    out: dict[str, float] = {}
    for name, res in zip(("GR", "SC", "CC"), _rank_multi(S, cand, flags, MODES, 20, False)):
        for k in (1, 5, 10, 20):
            out[f"{name}_top{k}"] = float(res.cmc[k - 1])
        out[f"{name}_mAP"] = res.mAP
    far_list = list(fars)
    tr = _tar_from_keys(S, _genuine_values(S, cand), far_list, "qme")
    for f, t in zip(far_list, tr.tar):
        out[_pct_key("TAR", f, "FAR")] = float(t)
    for f, t in zip(far_list, tr.threshold):
        out[_pct_key("Threshold", f, "FAR")] = float(t)
    uniq = as_ids(unique_g_pids, "unique_g_pids", _len(unique_g_pids), torch.device("cpu")).numpy()
    osr = fnir_at_fpir(merge_score_mat, q_pids, uniq, far_list, n_splits=10, keep_fraction=0.8,
                       seed=seed, split_rng="qme", device=S.device)
    for f, v in zip(far_list, osr.tpir_mean):
        out[_pct_key("TPIR", f, "FPIR")] = float(v)
    for f, v in zip(far_list, osr.fnir_mean):
        out[_pct_key("FNIR", f, "FPIR")] = float(v)
    for f, v in zip(far_list, osr.threshold.mean(axis=0)):
        out[_pct_key("FNIR", f, "FPIR") + "_threshold"] = float(v)
    P = S.shape[0]
    n_keep = int(len(uniq) * 0.8)
    out["num_probe_templates"] = float(P)
    out["num_probe_subjects"] = float(np.unique(as_ids(q_pids, "q_pids", P, torch.device("cpu")).numpy()).size)
    out["num_gallery_subjects"] = float(len(uniq))
    out["num_galley1_templates"] = float(n_keep)
    out["num_gallary1_subjects"] = float(n_keep)
    for f, v in zip(far_list, osr.tpir_std):
        out[_pct_key("TPIR", f, "FPIR") + "_std"] = float(v)
    for f, v in zip(far_list, osr.fnir_std):
        out[_pct_key("FNIR", f, "FPIR") + "_std"] = float(v)
    return out


def _len(x) -> int:
    return int(x.shape[0]) if hasattr(x, "shape") else len(x)
