"""Bootstrap percentile intervals and paired comparisons of the docs/definitions.rst, §2 metrics (issue 12).

The replicates are *weighted* versions of the one evaluation, never re-runs of the
metric on resampled matrices:

* **Replicate weights.** Every resampling unit (a probe *subject*, i.e. its pid, by
  default; a probe row with ``unit="probe"``) gets, in replicate ``b``, an integer
  weight ``w ~ Poisson(1)`` drawn from a counter-based hash (splitmix64) of
  ``(seed, b, unit id)``. Any block, thread, shard or device that sees a unit draws
  the same weight with no communication, and the weights do not depend on the
  order in which units are met. Poisson(1) weights are the standard large-sample
  equivalent of the multinomial resample (the number of units varies by replicate
  around the observed one); a weight ``w`` means "this unit's probe rows appear
  ``w`` times" in the resampled score matrix (the gallery is fixed).
* **Rank-k / mAP** (GR, SC, CC): weighted means over the valid probes of the
  per-probe first hits and APs that the ranking pass returns. Hit counts are exact
  integers; AP sums use a fixed-order (numpy pairwise) sum, so they are
  deterministic and equal the resampled-matrix means to rounding (1e-12).
* **TAR@FAR** ("qme" convention, docs/definitions.rst, §2.2): for replicate ``b`` the impostor total
  is ``N*_b = sum_p w_p n_imp_p``, ``k_b`` is the smallest ``k`` with ``k/N*_b >= far``
  and the threshold is the ``k_b``-th largest impostor key of the *weighted* multiset.
  The engine's radix select gives the key of rank ``M`` (a safe multiple of the
  largest point ``k``); one gather pass over the blocks collects the impostors with
  keys ``>=`` it and their units; per-unit bucket counts ``C`` (units x B buckets of
  the sorted collection) give every replicate's cumulative bucket totals as
  ``W @ C`` (integers in float64: exact), and the bucket holding rank ``k_b`` is
  resolved exactly. If some replicate's weighted count inside the collection falls
  short of ``k_b``, ``M`` grows and the gather is repeated. Genuine side: weighted
  counts of the genuine keys ``>=`` each replicate threshold (per-unit prefix counts).
  The result equals ``tar_at_far`` on the explicitly resampled matrix, bit for bit.
* **FNIR/TPIR@FPIR**: per enrolment split, the weighted order statistic of the
  non-mated row maxima (``k_b = int(n_nm*_b * fpir)``, the point rule) and the weighted
  share of mated hits above it, from the open-set pass's per-probe statistics; the
  splits are averaged as the point metric is. A replicate where a split has no
  mated or no non-mated probe (possible with zero weights) gives NaN and is left out.
* **Intervals**: percentile intervals ``(q_{(1-ci)/2}, q_{(1+ci)/2})`` of the
  non-NaN replicates (``np.nanpercentile``, linear interpolation).
* **Paired comparison** (:func:`compare`): both reports must come from the same
  probes, weights and seed; the difference ``a - b`` per replicate gives a
  percentile interval and the two-sided bootstrap p-value
  ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``.

The point values of every report are untouched; the intervals are extra keys
``<key>_ci`` = ``(lo, hi)``, and the replicates travel on :class:`BootReport`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..ops import keys as _keys
from .minp import inp_of
from .rprecision import r_precision_of
from .order_stats import ImpostorKeys, select_desc

UNITS = ("subject", "probe")
_BUCKETS = 1024
_CHUNK = 1 << 22  # elements per (replicates x probes) temporary


# ---------------------------------------------------------------------------
# options and weights
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    """Bootstrap options: interval level, number of replicates, seed, resampling unit."""

    ci: float = 0.95
    n_boot: int = 1000
    seed: int = 0
    unit: str = "subject"

    def interval(self, reps: np.ndarray) -> tuple:
        """Percentile interval of `reps` (..., n_boot) along the last axis (NaN left out)."""
        a = 100.0 * (1.0 - self.ci) / 2.0
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanpercentile(reps, [a, 100.0 - a], axis=-1)
        return lo, hi


# the most bootstrap replicates (each one a weighted pass; 1000 is the default)
MAX_N_BOOT = 1_000_000


def options(ci, n_boot=1000, boot_seed=0, boot_unit="subject") -> Optional[Bootstrap]:
    """The validated :class:`Bootstrap` of the public ``ci=...`` arguments (None: no CI)."""
    if ci is None:
        return None
    if isinstance(ci, bool) or not isinstance(ci, (float, int)) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci: expected a level in (0, 1) such as 0.95, got {ci!r}")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) \
            or not 2 <= n_boot <= MAX_N_BOOT:  # 10**12 was a 7 TiB MemoryError
        raise ValueError(f"n_boot: expected an integer in [2, {MAX_N_BOOT}], got {n_boot!r}")
    if not isinstance(boot_seed, (int, np.integer)) or isinstance(boot_seed, bool):
        raise ValueError(f"boot_seed: expected an integer, got {boot_seed!r}")
    if boot_unit not in UNITS:
        raise ValueError(f"boot_unit: expected one of {UNITS}, got {boot_unit!r}")
    return Bootstrap(float(ci), int(n_boot), int(boot_seed), boot_unit)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 arrays, wrap-around arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


# inverse CDF of Poisson(1): P(w <= j), j = 0..19 (the tail beyond has mass < 1e-18)
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(j) for j in range(20)])


def replicate_weights(unit_ids, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) float64 integer Poisson(1) weights of the units `unit_ids` (int64).

    Weight of (seed, replicate b, unit u) = a pure function of the three integers.
    """
    u = np.asarray(unit_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        s = _mix(np.uint64(seed & _keys.MASK64) + _GOLDEN)
        b = _mix(s ^ (np.arange(n_boot, dtype=np.uint64) * _GOLDEN))  # (n_boot,)
        x = _mix(b[:, None] + _mix(u + _GOLDEN)[None, :])
    uni = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return np.searchsorted(_POISSON_CDF, uni, side="right").astype(np.float64)


@dataclass
class Weights:
    """Replicate weights of the probes: per unit (``Wu``) and the unit of each probe."""

    Wu: np.ndarray  # (n_boot, n_units)
    unit_of_probe: np.ndarray  # (P,) index into the units
    units: np.ndarray  # (n_units,) unit ids

    @classmethod
    def of(cls, boot: Bootstrap, q_pids: np.ndarray) -> "Weights":
        ids = np.asarray(q_pids, dtype=np.int64) if boot.unit == "subject" \
            else np.arange(len(q_pids), dtype=np.int64)
        units, inv = np.unique(ids, return_inverse=True)
        return cls(replicate_weights(units, boot.n_boot, boot.seed), inv.reshape(-1), units)

    @property
    def Wp(self) -> np.ndarray:  # (n_boot, P)
        return self.Wu[:, self.unit_of_probe]

    def unit_totals(self, probe_values: np.ndarray) -> np.ndarray:
        """(n_boot,) sum_p w_p x_p of integer per-probe values (exact)."""
        per_unit = np.bincount(self.unit_of_probe, weights=probe_values,
                               minlength=self.Wu.shape[1])
        return self.Wu @ per_unit

    def weighted_sums(self, values: np.ndarray) -> np.ndarray:
        """(n_boot,) sum_p w_p x_p in a fixed order (fractional values, e.g. AP)."""
        n_boot, P = self.Wu.shape[0], values.size
        out = np.empty(n_boot)
        step = max(1, _CHUNK // max(P, 1))
        for r in range(0, n_boot, step):
            out[r:r + step] = (self.Wu[r:r + step, self.unit_of_probe] * values).sum(axis=1)
        return out


# ---------------------------------------------------------------------------
# weighted counting helpers
# ---------------------------------------------------------------------------
def _count_ge(values: np.ndarray, units: np.ndarray, thr: np.ndarray,
              Wu: np.ndarray) -> np.ndarray:
    """(n_boot,) sum over entries with value >= thr[b] of Wu[b, unit] (exact integers).

    Sorting the entries once, the entries counted by replicate b are a prefix of the
    descending order; per-unit counts of the prefixes, in replicate order of prefix
    length, are one bincount and one cumulative sum.
    """
    n_boot, n_units = Wu.shape
    if values.size == 0:
        return np.zeros(n_boot)
    order = np.argsort(values, kind="stable")
    asc, uo = values[order], units[order]
    n_ge = values.size - np.searchsorted(asc, thr, side="left")  # (n_boot,)
    rep_order = np.argsort(n_ge, kind="stable")
    j_sorted = n_ge[rep_order]
    pos_desc = values.size - 1 - np.arange(values.size)  # position of asc[i] in desc order
    first = np.searchsorted(j_sorted, pos_desc, side="right")  # first sorted replicate counting it
    keep = first < n_boot
    H = np.bincount(first[keep] * n_units + uo[keep], minlength=n_boot * n_units)
    cnt = np.cumsum(H.reshape(n_boot, n_units), axis=0)
    out = np.empty(n_boot)
    out[rep_order] = np.einsum("ij,ij->i", Wu[rep_order], cnt.astype(np.float64))
    return out


def _kth_desc(values_desc: np.ndarray, units: np.ndarray, k: np.ndarray, Wu: np.ndarray):
    """Per replicate, index (into `values_desc`) of the k[b]-th largest entry of the
    weighted multiset (k >= 1 and <= the weighted total); small collections."""
    n_boot = Wu.shape[0]
    idx = np.empty(n_boot, dtype=np.int64)
    step = max(1, _CHUNK // max(values_desc.size, 1))
    for r in range(0, n_boot, step):
        cum = np.cumsum(Wu[r:r + step][:, units], axis=1)
        idx[r:r + step] = (cum < k[r:r + step, None]).sum(axis=1)
    return idx


def _bucket_totals(Wu: np.ndarray, units: np.ndarray, positions: np.ndarray,
                   edges: np.ndarray) -> np.ndarray:
    """(n_boot, B) weighted number of entries in each bucket [edges[i], edges[i+1]) of a
    sorted collection: entries at `positions` with `units`; exact integers in float64."""
    B, n_units = edges.size - 1, Wu.shape[1]
    bucket = np.searchsorted(edges, positions, side="right") - 1
    C = np.bincount(units * B + bucket, minlength=n_units * B).reshape(n_units, B)
    return Wu @ C.astype(np.float64)


def _bucket_window(Wu: np.ndarray, units: np.ndarray, edges: np.ndarray, j: np.ndarray,
                   rows: np.ndarray) -> tuple:
    """The entries of bucket j[i] of a sorted collection, one row per replicate rows[i]:
    positions (n, L), inside mask (n, L) and their weights Wu[rows[i], unit] (0 outside),
    with L the longest bucket."""
    L = int(np.max(edges[1:] - edges[:-1]))
    pos = edges[j][:, None] + np.arange(L)[None, :]
    inside = pos < edges[j + 1][:, None]
    posc = np.minimum(pos, units.size - 1)
    return pos, inside, np.where(inside, Wu[rows[:, None], units[posc]], 0.0)


# ---------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------
def rank_replicates(W: Weights, first_pos: np.ndarray, ap: np.ndarray, num_good: np.ndarray,
                    ranks: Sequence[int], inp: Optional[np.ndarray] = None):
    """((len(ranks), n_boot) Rank-k rates, (n_boot,) mAP) of one protocol, and (n_boot,)
    mINP as a third element when the per-probe ``inp`` (P,) is given (0 where skipped)."""
    valid = (num_good > 0).astype(np.float64)
    n_valid = W.unit_totals(valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        hits = np.stack([W.unit_totals(valid * (first_pos < k)) for k in ranks]) / n_valid
    hits[:, n_valid == 0] = np.nan
    mAP = mean_replicates(W, ap, num_good)
    if inp is None:
        return hits, mAP
    return hits, mAP, mean_replicates(W, inp, num_good)


def mean_replicates(W: Weights, values: np.ndarray, num_good: np.ndarray) -> np.ndarray:
    """(n_boot,) replicates of the mean of a per-probe value (P,) over the valid probes
    (``num_good > 0``; the value is ignored elsewhere), NaN where a replicate has none."""
    valid = (num_good > 0).astype(np.float64)
    n_valid = W.unit_totals(valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = W.weighted_sums(np.where(num_good > 0, values, 0.0)) / n_valid
    out[n_valid == 0] = np.nan
    return out


def r_precision_replicates(W: Weights, num_good: np.ndarray, r_hits: np.ndarray,
                           map_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot,) replicates of R-precision and of MAP@R of one protocol."""
    return (mean_replicates(W, r_precision_of(r_hits, num_good), num_good),
            mean_replicates(W, map_r, num_good))


# ---------------------------------------------------------------------------
# verification: TAR@FAR, "qme" convention
# ---------------------------------------------------------------------------
def _smallest_k(far: float, n: np.ndarray) -> np.ndarray:
    """metrics._smallest_k_at_least for every total in `n` (float64 comparisons; 0
    where n == 0)."""
    n = np.asarray(n, dtype=np.float64)
    k = np.maximum(1.0, np.ceil(far * n))
    while True:
        down = (k > 1) & ((k - 1) / np.maximum(n, 1) >= far)
        up = (k < n) & (k / np.maximum(n, 1) < far)
        if not (down.any() or up.any()):
            break
        k = k - down + up
    return np.where(n > 0, k, 0).astype(np.int64)


def _row_searchsorted(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per row r, np.searchsorted(rows[r], v[r], side="left") (rows ascending)."""
    return (rows < v[:, None]).sum(axis=1)


def _gather_impostors(source, ids, imp: ImpostorKeys, rank: int, unit_of_probe: np.ndarray,
                      row_offset: int = 0):
    """(keys, units) of the impostor pairs whose key is >= that of the rank-th largest
    impostor (ties included): one pass over the source's blocks."""
    # every impostor (no select pass) when the rank reaches them all
    key_m = 0 if rank >= imp.num_impostor else select_desc(imp, [rank])[0][0]
    bits = imp.bits
    wide = torch.float64 if bits == 64 else torch.float32
    thr = _keys.value_of_key(key_m, bits)
    with_nan = imp.nan_key >= key_m
    q_pids, g_pids = ids.q_pids, ids.g_pids
    keys_out, units_out = [], []
    for blk in source.blocks(scores=True):
        S = blk.scores
        Sw = S if S.dtype == wide else S.to(wide)
        if key_m == 0:  # every impostor: key 0 has no value to compare with (it is NaN's)
            mask = torch.ones(Sw.shape, dtype=torch.bool, device=S.device)
        else:
            mask = Sw >= torch.tensor(thr, dtype=wide, device=S.device)
            if with_nan:
                mask |= torch.isnan(Sw)
        r, c = torch.nonzero(mask, as_tuple=True)
        r0 = blk.rows.start
        imp_pair = q_pids[r + r0] != g_pids[c]
        r, c = r[imp_pair], c[imp_pair]
        v = Sw[r, c].cpu().numpy()
        k = _keys.keys(v, bits)
        k[k == 0] = imp.nan_key
        keys_out.append(k)
        units_out.append(unit_of_probe[r.cpu().numpy() + r0 + row_offset])
    return np.concatenate(keys_out), np.concatenate(units_out)


def tar_replicates(W: Weights, source, ids, imp: ImpostorKeys, n_gen_probe: np.ndarray,
                   far_list: Sequence[float], num_cols: int, red=None, row_offset: int = 0,
                   gen_units: Optional[np.ndarray] = None):
    """((F, n_boot) TAR, (F, n_boot) thresholds) of the weighted replicates (docs/definitions.rst, §2.2).

    `W` and `n_gen_probe` cover every probe; `source`/`ids` are this process's rows,
    which start at global row `row_offset`; `red` (row shards) concatenates the
    gathered impostors of all processes. Ties are resolved by key only, so the order in
    which the processes' impostors arrive does not change any replicate. `gen_units`: the
    unit of each of ``imp.genuine_keys`` in their order (default: probe order)."""
    n_imp_probe = num_cols - n_gen_probe
    N_imp = W.unit_totals(n_imp_probe.astype(np.float64))
    N_gen = W.unit_totals(n_gen_probe.astype(np.float64))
    ks = np.stack([_smallest_k(f, N_imp) for f in far_list])  # (F, n_boot)
    k_point = max(1, max(_smallest_k(f, np.array([imp.num_impostor]))[0] for f in far_list))
    rank = min(imp.num_impostor, int(1.5 * k_point) + 4096)
    n_boot, n_units = W.Wu.shape
    while True:
        keys, units = _gather_impostors(source, ids, imp, rank, W.unit_of_probe, row_offset)
        if red is not None:
            # uint64 keys travel as int64 bits (torch's collectives have no uint64)
            keys, units = red.cat(keys.view(np.int64)).view(np.uint64), red.cat(units)
        per_unit = np.bincount(units, minlength=n_units).astype(np.float64)
        have = W.Wu @ per_unit
        if rank >= imp.num_impostor or np.all(have >= ks.max(axis=0)):
            break
        rank = min(imp.num_impostor, 2 * rank)
    order = np.argsort(keys, kind="stable")[::-1]
    keys, units = keys[order], units[order]
    n = keys.size
    edges = np.linspace(0, n, min(_BUCKETS, n) + 1).astype(np.int64)
    cumB = np.cumsum(_bucket_totals(W.Wu, units, np.arange(n), edges), axis=1)  # (n_boot, B)
    F = len(far_list)
    ok = (ks >= 1) & (N_gen > 0)[None, :] & (cumB[None, :, -1] >= ks)  # (F, n_boot)
    thr_key = np.zeros((F, n_boot), dtype=np.uint64)
    f_idx, b_idx = np.nonzero(ok)
    if f_idx.size:
        k = ks[f_idx, b_idx].astype(np.float64)
        j = _row_searchsorted(cumB[b_idx], k)  # bucket holding rank k
        before = np.where(j > 0, cumB[b_idx, np.maximum(j - 1, 0)], 0.0)
        _, _, w = _bucket_window(W.Wu, units, edges, j, b_idx)
        cum = before[:, None] + np.cumsum(w, axis=1)
        at = (cum < k[:, None]).sum(axis=1)  # first position reaching k
        thr_key[f_idx, b_idx] = keys[edges[j] + at]
    tars = np.full((F, n_boot), np.nan)
    if gen_units is None:
        gen_units = np.repeat(W.unit_of_probe, n_gen_probe)
    gkeys = imp.genuine_keys
    thresholds = np.full((len(far_list), n_boot), np.nan)
    for f in range(F):
        cnt = _count_ge(gkeys, gen_units, thr_key[f], W.Wu)
        with np.errstate(invalid="ignore", divide="ignore"):
            tars[f] = np.where(ok[f], cnt / N_gen, np.nan)
        for b in np.flatnonzero(ok[f]):
            thresholds[f, b] = _keys.value_of_key(int(thr_key[f, b]), imp.bits)
    return tars, thresholds


# ---------------------------------------------------------------------------
# EER (bob convention)
# ---------------------------------------------------------------------------
def eer_replicates(W: Weights, keys: np.ndarray, gen_flat: np.ndarray, G: int) -> np.ndarray:
    """(n_boot,) EER of the weighted replicates, each equal to ``metrics.eer`` of the
    explicitly resampled matrix.

    `keys` (P*G,) are the score keys row-major, `gen_flat` the flat indices of the genuine
    pairs. A candidate threshold is a cut of the ascending key order between distinct keys;
    with I = weighted impostors above the cut, F = weighted genuine below it, D = N_gen I -
    N_imp F (exact integers) does not increase along the cuts, so the smallest |D| (ties: the
    lowest cut, as ``eer``) is the first cut with D <= 0 or the first cut of the run before
    it. Cuts between keys that a replicate leaves unweighted repeat their neighbour's counts,
    so the same rule on all cuts of the full matrix gives the resample's EER. Bucket totals
    per unit give D at every bucket edge for all replicates in one matrix product; the one
    bucket holding the answer is then scanned entry by entry.
    """
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    genuine = np.zeros(keys.size, dtype=bool)
    genuine[gen_flat] = True
    gs = genuine[order]
    us = W.unit_of_probe[order // G]
    N = ks.size
    n_boot = W.Wu.shape[0]
    cuts = np.concatenate([[0], np.flatnonzero(ks[1:] != ks[:-1]) + 1, [N]])
    valid = np.zeros(N + 1, dtype=bool)
    valid[cuts] = True
    edges = np.unique(cuts[np.linspace(0, cuts.size - 1, min(_BUCKETS, cuts.size - 1) + 1)
                           .round().astype(np.int64)])

    def per_bucket(sel):  # (n_boot, B) weighted entries of each bucket (exact integers)
        return _bucket_totals(W.Wu, us[sel], np.flatnonzero(sel), edges).astype(np.int64)

    Ib, Fb = per_bucket(~gs), per_bucket(gs)
    N_imp, N_gen = Ib.sum(axis=1), Fb.sum(axis=1)
    zero = np.zeros((n_boot, 1), dtype=np.int64)
    F_edge = np.concatenate([zero, np.cumsum(Fb, axis=1)], axis=1)
    I_edge = N_imp[:, None] - np.concatenate([zero, np.cumsum(Ib, axis=1)], axis=1)
    D_edge = N_gen[:, None] * I_edge - N_imp[:, None] * F_edge
    rows = np.arange(n_boot)
    L = int(np.max(edges[1:] - edges[:-1]))

    def first_le(x):
        """(I, F, D, D of the previous valid cut) at the first valid cut with D <= x."""
        k = np.argmax(D_edge <= x[:, None], axis=1)  # exists: D at the last edge is minimal
        I, F, D = I_edge[rows, k].copy(), F_edge[rows, k].copy(), D_edge[rows, k].copy()
        prev = np.full(n_boot, np.iinfo(np.int64).max)
        inside = np.flatnonzero(k > 0)  # the answer lies after edge k-1, up to edge k
        step = max(1, _CHUNK // max(L, 1))
        for s in range(0, inside.size, step):
            b = inside[s:s + step]
            j = np.arange(b.size)
            pos, ins, wf = _bucket_window(W.Wu, us, edges, k[b] - 1, b)
            w = wf.astype(np.int64)
            g = gs[np.minimum(pos, N - 1)]
            Ic = I_edge[b, k[b] - 1][:, None] - np.cumsum(np.where(g, 0, w), axis=1)
            Fc = F_edge[b, k[b] - 1][:, None] + np.cumsum(np.where(g, w, 0), axis=1)
            Dc = N_gen[b, None] * Ic - N_imp[b, None] * Fc  # the cut after each entry
            vc = ins & valid[np.minimum(pos + 1, N)]
            m = np.argmax(vc & (Dc <= x[b, None]), axis=1)  # exists: the cut at hi
            I[b], F[b], D[b] = Ic[j, m], Fc[j, m], Dc[j, m]
            before = vc & (np.arange(L)[None, :] < m[:, None])
            last = L - 1 - np.argmax(before[:, ::-1], axis=1)
            prev[b] = np.where(before.any(axis=1), Dc[j, last], D_edge[b, k[b] - 1])
        return I, F, D, prev

    I, F, D, prev = first_le(np.zeros(n_boot, dtype=np.int64))
    back = (prev != np.iinfo(np.int64).max) & (np.abs(prev) <= np.abs(D))
    if back.any():  # the run before the first D <= 0 is as close: its first cut
        I2, F2, _, _ = first_le(np.where(back, prev, 0))
        I, F = np.where(back, I2, I), np.where(back, F2, F)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (I / N_imp + F / N_gen) / 2.0
    return np.where((N_imp > 0) & (N_gen > 0), out, np.nan)


# ---------------------------------------------------------------------------
# open-set identification
# ---------------------------------------------------------------------------
def openset_replicates(W: Weights, stats: tuple, enrolled: np.ndarray,
                       fpir_list: Sequence[float], rank: int = 1):
    """((F, n_boot) FNIR mean over splits, (F, n_boot) TPIR mean, (F, n_boot) mean
    threshold) of the weighted replicates, following metrics._openset_result."""
    max_other, num_ge, gen, gcol = stats
    has = gcol >= 0
    NS, F = enrolled.shape[0], len(fpir_list)
    n_boot = W.Wu.shape[0]
    tpir = np.zeros((NS, F, n_boot))
    thr = np.zeros((NS, F, n_boot))
    for s in range(NS):
        mated = has & (enrolled[s][np.maximum(gcol, 0)] == 1)
        n_m = W.unit_totals(mated.astype(np.float64))
        n_nm = W.unit_totals((~mated).astype(np.float64))
        nm = np.where(np.isnan(max_other[s][~mated]), -np.inf, max_other[s][~mated])
        order = np.argsort(nm, kind="stable")[::-1]
        nm_desc = nm[order]
        nm_units = W.unit_of_probe[~mated][order]
        hit = mated & (num_ge[s] < rank) & ~np.isnan(gen)
        g, g_units = gen[hit], W.unit_of_probe[hit]
        bad = (n_m == 0) | (n_nm == 0)
        for f, fpir in enumerate(fpir_list):
            k = np.floor(n_nm * fpir).astype(np.int64)
            kk = np.where(bad, 1, np.maximum(k, 1))
            idx = _kth_desc(nm_desc, nm_units, kk, W.Wu)
            idx = np.minimum(idx, max(nm_desc.size - 1, 0))
            t = nm_desc[idx] if nm_desc.size else np.zeros(n_boot)
            t = np.where(k >= 1, t, t + 1e-8)
            thr[s, f] = t
            with np.errstate(invalid="ignore", divide="ignore"):
                tp = _count_ge(g, g_units, t, W.Wu) / n_m
            tpir[s, f] = np.where(bad, np.nan, tp)
            thr[s, f] = np.where(bad, np.nan, t)
    fnir = 1.0 - tpir
    return fnir.mean(axis=0), tpir.mean(axis=0), thr.mean(axis=0)


# ---------------------------------------------------------------------------
# the report of evaluate() with intervals
# ---------------------------------------------------------------------------
class BootReport(dict):
    """A report dict with ``<key>_ci`` intervals; ``replicates`` holds the (n_boot,)
    replicate values of every key with an interval, ``boot`` the options and
    ``fingerprint`` identifies the probes (for :func:`compare`)."""

    replicates: dict
    boot: Bootstrap
    fingerprint: tuple


def add_intervals(out: dict, reps: dict, boot: Bootstrap, fingerprint: tuple) -> BootReport:
    """`out` with ``<key>_ci`` = (lo, hi) added after each key of `reps` (order kept)."""
    rep = BootReport()
    for key, val in out.items():
        rep[key] = val
        if key in reps:
            lo, hi = boot.interval(reps[key])
            rep[key + "_ci"] = (float(lo), float(hi))
    rep.replicates, rep.boot, rep.fingerprint = reps, boot, fingerprint
    return rep


def probe_fingerprint(q_pids: np.ndarray) -> tuple:
    q = np.ascontiguousarray(q_pids, dtype=np.int64)
    return (int(q.size), int(_mix(q.view(np.uint64) + _GOLDEN).sum(dtype=np.uint64)))


def report_replicates(parts, source, ids, setup, far_list, boot: Bootstrap, key_of,
                      red=None, shard: str = "rows") -> dict:
    """{report key: (n_boot,) replicates} of evaluate() from the engine's partial states.

    `key_of(prefix, rate, suffix)` names the FAR/FPIR keys as metrics.evaluate does.
    `red`: the reducer of the processes (None: one process); `shard`: "rows" or
    "columns". The per-probe partial states are already global (row shards concatenate
    them in process order, column shards combine them); the weights are drawn per unit
    id, so every process computes the same replicates with no further exchange than the
    impostors above the select rank and the genuine pairs' units.
    """
    q_local = ids.q_pids.cpu().numpy()
    n_gen_probe = _genuine_per_probe(ids)
    row_offset, num_cols, gen_units = 0, source.num_cols, None
    if red is None or red.size == 1:
        red = None
        W = Weights.of(boot, q_local)
    elif shard == "columns":  # every process holds every probe and some columns
        W = Weights.of(boot, q_local)
        # genuine keys arrive process by process, each in probe order
        gen_units = red.cat(np.repeat(W.unit_of_probe, n_gen_probe))
        n_gen_probe = red.sum(n_gen_probe)
        num_cols = int(red.sum(np.asarray([num_cols], dtype=np.int64))[0])
    else:
        sizes = red.stack(np.asarray([q_local.size], dtype=np.int64))[:, 0]
        row_offset = int(sizes[:red.rank].sum())
        W = Weights.of(boot, red.cat(q_local))
        n_gen_probe = red.cat(n_gen_probe)
    reps: dict = {}
    fp, ap, ng, lp, rh, mr = parts.rank
    for m, name in enumerate(("GR", "SC", "CC")):
        hits, mAP, mINP = rank_replicates(W, fp[m], ap[m], ng[m], (1, 5, 10, 20),
                                          inp_of(lp[m], ng[m]))
        for i, k in enumerate((1, 5, 10, 20)):
            reps[f"{name}_top{k}"] = hits[i]
        reps[f"{name}_mAP"] = mAP
        reps[f"{name}_mINP"] = mINP
        reps[f"{name}_RP"], reps[f"{name}_MAP@R"] = r_precision_replicates(W, ng[m], rh[m],
                                                                           mr[m])
    tars, thr = tar_replicates(W, source, ids, parts.impostors, n_gen_probe, far_list,
                               num_cols, red, row_offset, gen_units)
    fnir, tpir, othr = openset_replicates(W, parts.openset, setup.enrolled, far_list, 1)
    for f, far in enumerate(far_list):
        reps[key_of("TAR", far, "FAR")] = tars[f]
        reps[key_of("Threshold", far, "FAR")] = thr[f]
        reps[key_of("TPIR", far, "FPIR")] = tpir[f]
        reps[key_of("FNIR", far, "FPIR")] = fnir[f]
        reps[key_of("FNIR", far, "FPIR") + "_threshold"] = othr[f]
    return reps


def _genuine_per_probe(ids) -> np.ndarray:
    from .accumulate import GalleryIndex
    cand = GalleryIndex(ids.g_pids).candidates(ids.q_pids)
    return torch.diff(cand.offsets).cpu().numpy()


# ---------------------------------------------------------------------------
# intervals of the single-metric functions (rank_metrics, tar_at_far, fnir_at_fpir)
# ---------------------------------------------------------------------------
def _pairs(boot: Bootstrap, reps: np.ndarray) -> np.ndarray:
    """(..., 2) [lo, hi] of replicates (..., n_boot)."""
    lo, hi = boot.interval(reps)
    return np.stack([np.asarray(lo), np.asarray(hi)], axis=-1)


def rank_intervals(res, counts: tuple, q_pids: np.ndarray, max_rank: int, boot: Bootstrap):
    """Set ``cmc_ci`` (max_rank, 2), ``mAP_ci``, ``mINP_ci``, ``RP_ci`` and ``MAP_at_R_ci``
    (lo, hi) on RankResult `res`."""
    W = Weights.of(boot, q_pids)
    fp, ap, ng, lp, rh, mr = (c[0] for c in counts)
    hits, mAP, mINP = rank_replicates(W, fp, ap, ng, range(1, max_rank + 1), inp_of(lp, ng))
    rp, map_r = r_precision_replicates(W, ng, rh, mr)
    res.cmc_ci, res.mAP_ci = _pairs(boot, hits), tuple(_pairs(boot, mAP).tolist())
    res.mINP_ci = tuple(_pairs(boot, mINP).tolist())
    res.RP_ci, res.MAP_at_R_ci = (tuple(_pairs(boot, r).tolist()) for r in (rp, map_r))
    res.replicates = {"cmc": hits, "mAP": mAP, "mINP": mINP, "RP": rp, "MAP@R": map_r}
    return res



def tar_intervals(res, source, ids, imp: ImpostorKeys, far_list, boot: Bootstrap):
    """Set ``tar_ci`` and ``threshold_ci`` (F, 2) on TarResult `res` ("qme" convention)."""
    if res.convention != "qme":
        raise NotImplementedError("ci: bootstrap intervals of TAR@FAR need convention='qme'")
    W = Weights.of(boot, ids.q_pids.cpu().numpy())
    tars, thr = tar_replicates(W, source, ids, imp, _genuine_per_probe(ids), far_list,
                               source.num_cols)
    res.tar_ci, res.threshold_ci = _pairs(boot, tars), _pairs(boot, thr)
    res.replicates = {"tar": tars, "threshold": thr}
    return res


def openset_intervals(res, stats: tuple, setup, q_pids: np.ndarray, fpir_list, rank: int,
                      boot: Bootstrap):
    """Set ``fnir_mean_ci`` and ``tpir_mean_ci`` (F, 2) on OpenSetResult `res`."""
    W = Weights.of(boot, q_pids)
    fnir, tpir, _ = openset_replicates(W, stats, setup.enrolled, fpir_list, rank)
    res.fnir_mean_ci, res.tpir_mean_ci = _pairs(boot, fnir), _pairs(boot, tpir)
    res.replicates = {"fnir_mean": fnir, "tpir_mean": tpir}
    return res


# ---------------------------------------------------------------------------
# paired comparison
# ---------------------------------------------------------------------------
def compare(report_a: BootReport, report_b: BootReport, keys: Optional[Sequence[str]] = None,
            ci: Optional[float] = None) -> dict:
    """Paired bootstrap comparison of two reports of the same probes (``a - b``).

    Both reports must carry replicates drawn with the same options and probes
    (``evaluate(..., ci=...)`` with the same ``n_boot``/``boot_seed``/``boot_unit``).
    Returns ``{key: {"diff", "ci": (lo, hi), "p_value"}}`` for every key with
    replicates in both (or `keys`); ``ci`` defaults to the reports' level.
    """
    for name, r in (("report_a", report_a), ("report_b", report_b)):
        if not isinstance(r, BootReport):
            raise ValueError(f"{name}: expected a report computed with ci=... (bootstrap "
                             "replicates); got one without")
    if report_a.boot.n_boot != report_b.boot.n_boot or report_a.boot.seed != report_b.boot.seed \
            or report_a.boot.unit != report_b.boot.unit:
        raise ValueError("compare: the reports use different bootstrap options (n_boot, "
                         "boot_seed, boot_unit); a paired comparison needs the same weights")
    if report_a.fingerprint != report_b.fingerprint:
        raise ValueError("compare: the reports are not of the same probes")
    boot = report_a.boot if ci is None else options(ci, report_a.boot.n_boot,
                                                    report_a.boot.seed, report_a.boot.unit)
    names = [k for k in report_a.replicates if k in report_b.replicates] if keys is None \
        else list(keys)
    out = {}
    for k in names:
        d = report_a.replicates[k] - report_b.replicates[k]
        lo, hi = boot.interval(d)
        ok = d[~np.isnan(d)]
        p = min(1.0, 2.0 * min(np.mean(ok <= 0), np.mean(ok >= 0))) if ok.size else float("nan")
        out[k] = {"diff": float(report_a[k] - report_b[k]), "ci": (float(lo), float(hi)),
                  "p_value": float(p)}
    return out


__all__ = ["Bootstrap", "BootReport", "options", "replicate_weights", "compare", "UNITS"]
