"""Readable pure-numpy reference implementation of the evaluation metrics (docs/definitions.rst, §2).

This module is the test oracle for the fast CPU/CUDA kernels. It favours being obviously
correct over being fast: every metric is computed literally from its definition, with explicit
sorts and loops. It must not import anything else from ``qme_ext`` so that it stays usable
before the compiled extension exists.

Conventions used throughout:

* ``scores`` / ``S``: similarity matrix of shape ``(P, G)`` (probes x gallery), higher means
  more alike. It is widened to float64 before anything else.
* ids (pids, camera ids, clothes ids) may arrive as floats; they are cast to int64.
* All rates are fractions in [0, 1] (not percent).
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics.splits import numpy_splits, qme_splits  # the product draws them; see there

__all__ = [
    "count_before_ref",
    "rank_metrics_ref",
    "tar_at_far_ref",
    "qme_splits",
    "numpy_splits",
    "fnir_at_fpir_ref",
    "roc_ref",
    "det_ref",
    "eer_ref",
    "evaluate_ref",
]

DEFAULT_FARS = (1e-4, 1e-3, 1e-2)


# --------------------------------------------------------------------------------------------
# input helpers
# --------------------------------------------------------------------------------------------
def _as_ids(values, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, shape ``(N,)``.

    Ids stored as floats in HDF5 are legal, but a non-finite id cannot name a subject.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite ids")
    return arr.astype(np.int64)


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a 2-D float64 array of shape ``(P, G)``."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (P, G), got shape {arr.shape}")
    return arr


def _check_len(arr: np.ndarray, n: int, name: str, axis_name: str) -> None:
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n} ({axis_name})")


# --------------------------------------------------------------------------------------------
# 2.1 ranking: CMC and mAP
# --------------------------------------------------------------------------------------------
def descending_order(row: np.ndarray) -> np.ndarray:
    """Gallery indices of one score row, best first.

    Parameters
    ----------
    row : float array, shape ``(G,)``

    Returns
    -------
    int64 array, shape ``(G,)``: a stable descending order (ties keep the lower index first),
    with NaN entries after every number including ``-inf``.

    NaN is made the primary key on purpose: a plain ``np.argsort(-row, kind="stable")`` happens
    to put NaN last too, but the kernels must reproduce this rule, so it is stated explicitly
    rather than inherited from numpy's NaN sorting. Adding 0.0 maps -0.0 to +0.0 so both zeros
    tie on value and fall back to the index.
    """
    row = np.asarray(row, dtype=np.float64)
    is_nan = np.isnan(row)
    neg = np.where(is_nan, 0.0, -row) + 0.0
    # np.lexsort sorts by the LAST key first and is stable, so the final tie-break is the index.
    return np.lexsort((neg, is_nan.astype(np.int8))).astype(np.int64)


def count_before_ref(scores, col_offset, query_offsets, query_values, query_cols) -> np.ndarray:
    """Oracle of ``qme_ext::count_before`` (column shards of a gallery).

    Parameters
    ----------
    scores : ``(P, G)`` a column shard whose local column 0 is global column ``col_offset``
    query_offsets : ``(P + 1,)`` CSR offsets: row p owns queries ``[off[p], off[p + 1])``
    query_values, query_cols : ``(nq,)`` score and global column of each query

    Returns
    -------
    int64 array, shape ``(nq,)``: entries of the query's row ranked before the query in the
    order of :func:`descending_order` (higher score first, NaN after every number, -0.0 tied
    with +0.0, ties by lower global column; an entry does not precede itself).
    """
    S = _as_scores(scores)
    cols = int(col_offset) + np.arange(S.shape[1])
    out = np.zeros(len(query_values), dtype=np.int64)
    for p in range(S.shape[0]):
        row = S[p]
        for q in range(int(query_offsets[p]), int(query_offsets[p + 1])):
            v, c = float(query_values[q]), int(query_cols[q])
            if math.isnan(v):
                above, tie = ~np.isnan(row), np.isnan(row)
            else:
                above, tie = row > v, row == v  # NaN compares False: it ranks last
            out[q] = np.count_nonzero(above | (tie & (cols < c)))
    return out


def _good_junk_masks(i, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode):
    """Boolean masks ``(good, junk)`` over the gallery, each shape ``(G,)``, for probe ``i``."""
    same_pid = g_pids == q_pids[i]
    if q_camids is None:
        # no camera information: every same-pid entry counts, nothing is discarded
        return same_pid, np.zeros_like(same_pid)
    same_cam = g_camids == q_camids[i]
    if mode == "general":
        good = same_pid & ~same_cam
        junk = same_pid & same_cam
    else:
        same_clothes = g_clothes == q_clothes[i]
        if mode == "cc":
            good = same_pid & ~same_cam & ~same_clothes
            junk = same_pid & (same_cam | same_clothes)
        else:  # "sc"
            good = same_pid & ~same_cam & same_clothes
            junk = same_pid & (same_cam | ~same_clothes)
    return good, junk


def good_positions(row, good, junk) -> np.ndarray:
    """0-based positions ``p_1 < ... < p_n`` of the good entries once junk is removed.

    Parameters
    ----------
    row : float array ``(G,)``; good, junk : bool arrays ``(G,)``.

    Returns
    -------
    int64 array ``(n,)``, ascending.
    """
    order = descending_order(row)
    kept = order[~junk[order]]
    return np.flatnonzero(good[kept]).astype(np.int64)


def average_precision(positions: np.ndarray) -> float:
    """``AP = (1/n) * sum_i i / (p_i + 1)`` for 0-based good positions ``p_i`` (i from 1)."""
    n = len(positions)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum(ranks / (positions.astype(np.float64) + 1.0)) / n)


def r_precision_terms(positions: np.ndarray) -> tuple[int, float]:
    """R-precision numerator and MAP@R (Musgrave et al. 2020, "A Metric Learning Reality
    Check") of one probe from its 0-based good positions ``p_1 < ... < p_n`` after junk
    removal, with R = n: returns ``(#{i : p_i < R}, (1/R) * sum_{i : p_i < R} i / (p_i + 1))``
    (``(0, 0.0)`` when n = 0). R-precision is the first value over R."""
    R = len(positions)
    if R == 0:
        return 0, 0.0
    ranks = np.arange(1, R + 1, dtype=np.float64)
    top = positions < R
    return int(top.sum()), float(np.sum(ranks[top] / (positions[top] + 1.0)) / R)


def rank_metrics_ref(
    scores,
    q_pids,
    g_pids,
    q_camids=None,
    g_camids=None,
    q_clothes=None,
    g_clothes=None,
    mode="general",
    max_rank=20,
):
    """CMC curve and mAP (docs/definitions.rst, §2.1), literally via a stable sort per probe.

    Parameters
    ----------
    scores : array ``(P, G)``
    q_pids, g_pids : ids ``(P,)``, ``(G,)``
    q_camids, g_camids : camera ids or None (then every same-pid entry is good, no junk)
    q_clothes, g_clothes : clothes ids; required (with cameras) by modes ``"cc"``/``"sc"``
    mode : ``"general"`` | ``"cc"`` | ``"sc"``
    max_rank : length R of the returned CMC

    Returns
    -------
    dict with
      ``cmc``: float64 ``(R,)``, ``cmc[k-1]`` = fraction of valid probes with ``p_1 < k``;
      ``mAP``: float, mean AP over valid probes (0.0 if none);
      ``num_valid``, ``num_skipped``: int probe counts (skipped = no good entry);
      ``ap``: float64 ``(P,)``, NaN for skipped probes;
      ``first_pos``: int64 ``(P,)``, 0-based ``p_1``, -1 for skipped probes;
      ``inp``: float64 ``(P,)``, ``n / (p_n + 1)`` (fast-reid's INP), NaN for skipped probes;
      ``mINP``: float, mean INP over valid probes (0.0 if none);
      ``rp``, ``map_r``: float64 ``(P,)``, R-precision and MAP@R (:func:`r_precision_terms`),
      NaN for skipped probes; ``RP``, ``MAP@R``: their means over valid probes (0.0 if none).
    """
    if mode not in ("general", "cc", "sc"):
        raise ValueError(f"mode must be 'general', 'cc' or 'sc', got {mode!r}")
    S = _as_scores(scores)
    P, G = S.shape
    q_pids = _as_ids(q_pids, "q_pids")
    g_pids = _as_ids(g_pids, "g_pids")
    _check_len(q_pids, P, "q_pids", "rows of scores")
    _check_len(g_pids, G, "g_pids", "columns of scores")

    if (q_camids is None) != (g_camids is None):
        raise ValueError("q_camids and g_camids must be given together")
    if mode != "general" and (q_camids is None or q_clothes is None or g_clothes is None):
        raise ValueError(f"mode {mode!r} needs camera ids and clothes ids for probes and gallery")
    if q_camids is not None:
        q_camids = _as_ids(q_camids, "q_camids")
        g_camids = _as_ids(g_camids, "g_camids")
        _check_len(q_camids, P, "q_camids", "rows of scores")
        _check_len(g_camids, G, "g_camids", "columns of scores")
    if mode != "general":
        q_clothes = _as_ids(q_clothes, "q_clothes")
        g_clothes = _as_ids(g_clothes, "g_clothes")
        _check_len(q_clothes, P, "q_clothes", "rows of scores")
        _check_len(g_clothes, G, "g_clothes", "columns of scores")

    ap = np.full(P, np.nan, dtype=np.float64)
    first_pos = np.full(P, -1, dtype=np.int64)
    inp = np.full(P, np.nan, dtype=np.float64)
    rp = np.full(P, np.nan, dtype=np.float64)
    map_r = np.full(P, np.nan, dtype=np.float64)
    for i in range(P):
        good, junk = _good_junk_masks(
            i, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode
        )
        if not good.any():
            continue
        pos = good_positions(S[i], good, junk)
        ap[i] = average_precision(pos)
        first_pos[i] = pos[0]
        inp[i] = len(pos) / (pos[-1] + 1.0)
        hits, map_r[i] = r_precision_terms(pos)
        rp[i] = hits / len(pos)

    valid = first_pos >= 0
    num_valid = int(valid.sum())
    cmc = np.zeros(max_rank, dtype=np.float64)
    if num_valid > 0:
        for k in range(1, max_rank + 1):
            cmc[k - 1] = np.sum(first_pos[valid] < k) / num_valid
        mAP = float(np.sum(ap[valid]) / num_valid)
        mINP = float(np.sum(inp[valid]) / num_valid)
        RP = float(np.sum(rp[valid]) / num_valid)
        MAP_R = float(np.sum(map_r[valid]) / num_valid)
    else:
        mAP = mINP = RP = MAP_R = 0.0
    return {
        "cmc": cmc,
        "mAP": mAP,
        "mINP": mINP,
        "inp": inp,
        "RP": RP,
        "MAP@R": MAP_R,
        "rp": rp,
        "map_r": map_r,
        "num_valid": num_valid,
        "num_skipped": int(P - num_valid),
        "ap": ap,
        "first_pos": first_pos,
    }


# --------------------------------------------------------------------------------------------
# 2.2 verification: TAR@FAR, ROC, DET, EER
# --------------------------------------------------------------------------------------------
def _genuine_impostor(scores, q_pids, g_pids):
    """Split all ``P*G`` pair scores into (genuine, impostor) float64 vectors.

    NaN scores become the minimum non-NaN score of the whole matrix (0.0 if all are NaN): the
    QME reference treats a missing comparison as the worst observed one.
    """
    S = _as_scores(scores).copy()
    P, G = S.shape
    q_pids = _as_ids(q_pids, "q_pids")
    g_pids = _as_ids(g_pids, "g_pids")
    _check_len(q_pids, P, "q_pids", "rows of scores")
    _check_len(g_pids, G, "g_pids", "columns of scores")
    nan = np.isnan(S)
    if nan.any():
        S[nan] = S[~nan].min() if (~nan).any() else 0.0
    same = q_pids[:, None] == g_pids[None, :]
    genuine, impostor = S[same], S[~same]
    if genuine.size == 0:
        raise ValueError("no genuine (same-pid) pair in the score matrix")
    if impostor.size == 0:
        raise ValueError("no impostor (different-pid) pair in the score matrix")
    return genuine, impostor


def _qme_k(far: float, n_imp: int) -> int:
    """Smallest integer k >= 1 with ``k / n_imp >= far`` in float64 (capped at n_imp)."""
    k = max(1, math.ceil(far * n_imp))
    # far * n_imp is rounded; fix k up/down so the float64 ratio test is exactly what is asked
    while k < n_imp and k / n_imp < far:
        k += 1
    while k > 1 and (k - 1) / n_imp >= far:
        k -= 1
    return min(k, n_imp)


def _conservative_threshold(impostor: np.ndarray, far: float) -> float:
    """bob.measure ``far_threshold``: lowest impostor value v with ``#{imp >= v}/N <= far``.

    Runs of equal values are taken whole because the count uses ``>=``. If no impostor value
    qualifies, the threshold is just above the maximum impostor (achieved FAR 0).
    """
    n = impostor.size
    for v in np.unique(impostor):  # ascending, so the first hit is the lowest qualifying v
        if np.sum(impostor >= v) / n <= far:
            return float(v)
    return float(np.nextafter(impostor.max(), np.inf))


def tar_at_far_ref(scores, q_pids, g_pids, fars=DEFAULT_FARS, convention="qme"):
    """TAR at fixed FARs over all ``P*G`` pairs (docs/definitions.rst, §2.2).

    Parameters
    ----------
    scores : ``(P, G)``; q_pids ``(P,)``; g_pids ``(G,)``
    fars : sequence of target false-accept rates (fractions)
    convention : ``"qme"`` (k-th largest impostor, k = smallest k >= 1 with k/N_imp >= far) or
        ``"conservative"`` (bob.measure ``far_threshold``).

    Returns
    -------
    dict: ``tar``, ``threshold``, ``achieved_far`` float64 ``(F,)``; ``num_genuine``,
    ``num_impostor`` ints. A pair is accepted when its score is ``>= threshold``.
    """
    if convention not in ("qme", "conservative"):
        raise ValueError(f"convention must be 'qme' or 'conservative', got {convention!r}")
    genuine, impostor = _genuine_impostor(scores, q_pids, g_pids)
    n_gen, n_imp = genuine.size, impostor.size
    imp_desc = np.sort(impostor)[::-1]

    fars = np.atleast_1d(np.asarray(fars, dtype=np.float64))
    tar = np.empty(fars.size)
    thr = np.empty(fars.size)
    achieved = np.empty(fars.size)
    for j, far in enumerate(fars):
        if convention == "qme":
            t = float(imp_desc[_qme_k(float(far), n_imp) - 1])
        else:
            t = _conservative_threshold(impostor, float(far))
        thr[j] = t
        tar[j] = np.sum(genuine >= t) / n_gen
        achieved[j] = np.sum(impostor >= t) / n_imp
    return {
        "tar": tar,
        "threshold": thr,
        "achieved_far": achieved,
        "num_genuine": int(n_gen),
        "num_impostor": int(n_imp),
    }


def roc_ref(scores, q_pids, g_pids):
    """ROC at every distinct score value, thresholds descending.

    Returns
    -------
    ``(far, tar, thresholds)``, each float64 ``(T,)`` with T = number of distinct scores;
    ``far[j] = #{imp >= t_j}/N_imp``, ``tar[j] = #{gen >= t_j}/N_gen``. NaN as in
    :func:`tar_at_far_ref`.
    """
    genuine, impostor = _genuine_impostor(scores, q_pids, g_pids)
    thresholds = np.unique(np.concatenate([genuine, impostor]))[::-1]
    far = np.array([np.sum(impostor >= t) for t in thresholds], dtype=np.float64) / impostor.size
    tar = np.array([np.sum(genuine >= t) for t in thresholds], dtype=np.float64) / genuine.size
    return far, tar, thresholds.copy()


def det_ref(scores, q_pids, g_pids):
    """DET points ``(far, frr)`` at the same thresholds as :func:`roc_ref`; frr = 1 - tar."""
    far, tar, _ = roc_ref(scores, q_pids, g_pids)
    return far, 1.0 - tar


def _eer_candidates(values: np.ndarray) -> np.ndarray:
    """Candidate thresholds, ascending: below the minimum, midpoints, above the maximum.

    Any t in ``(a, b]`` separates consecutive distinct scores a < b; the midpoint is the
    conventional (bob) choice. When the midpoint is not representable strictly above a
    (adjacent floats) or overflows/involves infinities, b itself is used, which separates the
    same way.
    """
    u = np.unique(values)
    cands = [np.nextafter(u[0], -np.inf)]
    for a, b in zip(u[:-1], u[1:]):
        with np.errstate(over="ignore", invalid="ignore"):
            mid = a + (b - a) / 2.0
        cands.append(mid if (np.isfinite(mid) and a < mid <= b) else b)
    cands.append(np.nextafter(u[-1], np.inf))
    return np.asarray(cands, dtype=np.float64)


def eer_ref(scores, q_pids, g_pids):
    """Equal error rate, bob.measure style (docs/definitions.rst, §2.4).

    FAR(t) = #{imp >= t}/N_imp, FRR(t) = #{gen < t}/N_gen over the midpoint candidates of
    :func:`_eer_candidates`; t minimises |FAR - FRR| (first in ascending order on ties).

    Returns
    -------
    ``(eer, threshold)`` floats, ``eer = (FAR(t) + FRR(t)) / 2``.
    """
    genuine, impostor = _genuine_impostor(scores, q_pids, g_pids)
    best = None
    for t in _eer_candidates(np.concatenate([genuine, impostor])):
        n_far, n_frr = int(np.sum(impostor >= t)), int(np.sum(genuine < t))
        far, frr = n_far / impostor.size, n_frr / genuine.size
        # |FAR - FRR| * N_imp * N_gen as an exact integer: rounding must not break ties
        gap = abs(n_far * genuine.size - n_frr * impostor.size)
        if best is None or gap < best[0]:
            best = (gap, float((far + frr) / 2.0), float(t))
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# 2.3 open-set identification: FNIR@FPIR
# --------------------------------------------------------------------------------------------
def _openset_threshold(nonmated_max: np.ndarray, fpir: float) -> float:
    """k-th largest non-mated row maximum, k = int(N_nm * fpir); largest + 1e-8 when k = 0."""
    desc = np.sort(nonmated_max)[::-1]
    k = int(desc.size * fpir)  # truncation, like the reference's astype(np.int32)
    if k >= 1:
        return float(desc[min(k, desc.size) - 1])
    return float(desc[0] + 1e-8)


def _split_rates(M, q_pids, subject_ids, enrolled, fpirs, rank, split_no):
    """TPIR and threshold per FPIR for one split; returns two float64 arrays ``(F,)``."""
    cols = np.flatnonzero(np.isin(subject_ids, enrolled))
    sub = M[:, cols]
    # NaN ranks lowest: it never beats a number and can never reach a threshold
    sub_nan = np.isnan(sub)
    sub_low = np.where(sub_nan, -np.inf, sub)
    col_ids = subject_ids[cols]

    mated = np.isin(q_pids, col_ids)
    if not mated.any():
        raise ValueError(f"split {split_no}: no mated probe (no probe pid is enrolled)")
    if mated.all():
        raise ValueError(f"split {split_no}: no non-mated probe (every probe pid is enrolled)")

    nonmated_max = sub_low[~mated].max(axis=1)

    # per mated probe: is its mate within the top `rank` (strictly), and its genuine score
    in_rank = []
    gen_scores = []
    for i in np.flatnonzero(mated):
        g = int(np.flatnonzero(col_ids == q_pids[i])[0])
        gs = sub_low[i, g]
        others = np.delete(sub_low[i], g)
        # a tie with another enrolled subject is not a hit: count others >= genuine
        in_rank.append((not sub_nan[i, g]) and np.sum(others >= gs) < rank)
        gen_scores.append(gs)
    in_rank = np.asarray(in_rank, dtype=bool)
    gen_scores = np.asarray(gen_scores, dtype=np.float64)

    tpir = np.empty(len(fpirs))
    thr = np.empty(len(fpirs))
    for j, fpir in enumerate(fpirs):
        t = _openset_threshold(nonmated_max, float(fpir))
        hits = in_rank & (gen_scores >= t)
        tpir[j] = hits.sum() / hits.size
        thr[j] = t
    return tpir, thr


def _std_ddof1(x: np.ndarray) -> np.ndarray:
    """Sample std over axis 0 (ddof=1); NaN when there is a single split."""
    if x.shape[0] < 2:
        return np.full(x.shape[1:], np.nan)
    return np.std(x, axis=0, ddof=1)


def fnir_at_fpir_ref(
    merge_scores,
    q_pids,
    subject_ids,
    fpirs=DEFAULT_FARS,
    splits=None,
    n_splits=10,
    keep_fraction=0.8,
    seed=45,
    split_rng="qme",
    rank=1,
):
    """Open-set FNIR/TPIR at fixed FPIRs averaged over enrolment splits (docs/definitions.rst, §2.3).

    Parameters
    ----------
    merge_scores : ``(P, S)``, one column per gallery subject
    q_pids : ``(P,)``
    subject_ids : ``(S,)``, the subject id of each column (unique)
    fpirs : target false-positive identification rates
    splits : explicit list of enrolled-id arrays, or None to draw them with
        ``split_rng`` = ``"qme"`` (:func:`qme_splits`) or ``"numpy"`` (:func:`numpy_splits`)
    rank : a mate counts as found when fewer than ``rank`` other enrolled subjects score
        ``>=`` its genuine score (rank 1: strictly the best)

    Returns
    -------
    dict: ``fnir``, ``tpir``, ``threshold`` float64 ``(n_splits, F)``; ``fnir_mean``,
    ``fnir_std``, ``tpir_mean``, ``tpir_std`` float64 ``(F,)`` (std ddof=1); ``splits``.
    """
    M = _as_scores(merge_scores, "merge_scores")
    q_pids = _as_ids(q_pids, "q_pids")
    subject_ids = _as_ids(subject_ids, "subject_ids")
    _check_len(q_pids, M.shape[0], "q_pids", "rows of merge_scores")
    _check_len(subject_ids, M.shape[1], "subject_ids", "columns of merge_scores")
    if np.unique(subject_ids).size != subject_ids.size:
        raise ValueError("subject_ids must be unique (one merge_scores column per subject)")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")

    if splits is None:
        if split_rng == "qme":
            splits = qme_splits(subject_ids, n_splits, keep_fraction, seed)
        elif split_rng == "numpy":
            splits = numpy_splits(subject_ids, n_splits, keep_fraction, seed)
        else:
            raise ValueError(f"split_rng must be 'qme' or 'numpy', got {split_rng!r}")
    splits = [_as_ids(s, f"splits[{n}]") for n, s in enumerate(splits)]
    if len(splits) == 0:
        raise ValueError("no split given")
    for n, s in enumerate(splits):
        unknown = np.setdiff1d(s, subject_ids)
        if unknown.size:
            raise ValueError(f"split {n}: enrolled ids not among subject_ids: {unknown[:5]}")

    fpirs = np.atleast_1d(np.asarray(fpirs, dtype=np.float64))
    tpir = np.empty((len(splits), fpirs.size))
    thr = np.empty((len(splits), fpirs.size))
    for n, enrolled in enumerate(splits):
        tpir[n], thr[n] = _split_rates(M, q_pids, subject_ids, enrolled, fpirs, rank, n)
    fnir = 1.0 - tpir
    return {
        "fnir_mean": fnir.mean(axis=0),
        "fnir_std": _std_ddof1(fnir),
        "tpir_mean": tpir.mean(axis=0),
        "tpir_std": _std_ddof1(tpir),
        "fnir": fnir,
        "tpir": tpir,
        "threshold": thr,
        "splits": splits,
    }


# --------------------------------------------------------------------------------------------
# the full QME report
# --------------------------------------------------------------------------------------------
def _rate_key(prefix: str, rate: float, suffix: str) -> str:
    return f"{prefix}@{rate:.2%}{suffix}"


def evaluate_ref(
    score_mat,
    merge_score_mat,
    q_pids,
    q_camids,
    q_clothes_ids,
    g_pids,
    g_camids,
    g_clothes_ids,
    unique_g_pids,
    seed=45,
):
    """The QME reference ``test_score`` report (protocol ``qme``) as ``dict[str, float]``.

    Key order follows the reference's concatenation: GR_*, SC_*, CC_*, TAR@*, Threshold@*,
    then the split means (TPIR@*, FNIR@*, FNIR@*_threshold, bookkeeping counts), then the
    ddof=1 stds (TPIR@*_std, FNIR@*_std). Counts are reported as floats, like the reference's
    pandas mean over splits.
    """
    q_pids = _as_ids(q_pids, "q_pids")
    g_pids = _as_ids(g_pids, "g_pids")
    unique_g_pids = _as_ids(unique_g_pids, "unique_g_pids")
    ids = dict(q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids,
               q_clothes=q_clothes_ids, g_clothes=g_clothes_ids)

    out: dict[str, float] = {}
    for prefix, mode in (("GR", "general"), ("SC", "sc"), ("CC", "cc")):
        r = rank_metrics_ref(score_mat, mode=mode, max_rank=20, **ids)
        for k in (1, 5, 10, 20):
            out[f"{prefix}_top{k}"] = float(r["cmc"][k - 1])
        out[f"{prefix}_mAP"] = float(r["mAP"])
        out[f"{prefix}_mINP"] = float(r["mINP"])
        out[f"{prefix}_RP"] = float(r["RP"])
        out[f"{prefix}_MAP@R"] = float(r["MAP@R"])

    v = tar_at_far_ref(score_mat, q_pids, g_pids, DEFAULT_FARS, convention="qme")
    for j, far in enumerate(DEFAULT_FARS):
        out[_rate_key("TAR", far, "FAR")] = float(v["tar"][j])
    for j, far in enumerate(DEFAULT_FARS):
        out[_rate_key("Threshold", far, "FAR")] = float(v["threshold"][j])

    o = fnir_at_fpir_ref(merge_score_mat, q_pids, unique_g_pids, DEFAULT_FARS,
                         n_splits=10, keep_fraction=0.8, seed=seed, split_rng="qme")
    for j, f in enumerate(DEFAULT_FARS):
        out[_rate_key("TPIR", f, "FPIR")] = float(o["tpir_mean"][j])
    for j, f in enumerate(DEFAULT_FARS):
        out[_rate_key("FNIR", f, "FPIR")] = float(o["fnir_mean"][j])
    for j, f in enumerate(DEFAULT_FARS):
        out[_rate_key("FNIR", f, "FPIR_threshold")] = float(o["threshold"][:, j].mean())

    n_enrolled = int(len(unique_g_pids) * 0.8)
    out["num_probe_templates"] = float(len(q_pids))
    out["num_probe_subjects"] = float(np.unique(q_pids).size)
    out["num_gallery_subjects"] = float(len(unique_g_pids))
    # misspelt keys are the reference's own
    out["num_galley1_templates"] = float(n_enrolled)
    out["num_gallary1_subjects"] = float(n_enrolled)

    for j, f in enumerate(DEFAULT_FARS):
        out[_rate_key("TPIR", f, "FPIR") + "_std"] = float(o["tpir_std"][j])
    for j, f in enumerate(DEFAULT_FARS):
        out[_rate_key("FNIR", f, "FPIR") + "_std"] = float(o["fnir_std"][j])
    return out
