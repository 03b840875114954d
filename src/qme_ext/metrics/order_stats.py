"""Exact order statistics of the impostor scores by radix select (docs/definitions.rst, §2.2, §6).

The score matrix is histogrammed one 16-bit key digit at a time by the
``key_histogram`` kernel; genuine pairs (same pid, few) are gathered on the side
and subtracted, so no P x G mask is ever built and nothing is sorted. A 32-bit
key needs two passes, a 64-bit key four; all requested ranks share each pass.

Everything a pass produces is additive, so the matrix may come in row blocks
(out-of-core) or be spread over processes (sharded evaluation): the first pass
gives :class:`KeyStats` per block, merged with :meth:`KeyStats.merge`; each later
pass is a :data:`HistogramPass` that sums the blocks' histograms (and, sharded,
all-reduces them). The selection itself only ever sees whole-matrix counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..ops import keys as _keys
from ..ops.evaluation import key_histogram

DIGIT_BITS = 16
_NO_PREFIX = torch.zeros(0, dtype=torch.int64)

# (digit_shift, prefixes as unsigned ints, nan_key) -> (len(prefixes), 2**16) int64
# histogram of that digit over the keys of the whole matrix having each prefix
# (bits above the digit); NaN scores take nan_key.
HistogramPass = Callable[[int, Sequence[int], int], np.ndarray]


def key_bits_of(scores: torch.Tensor) -> int:
    return 64 if scores.dtype == torch.float64 else 32


@dataclass
class KeyStats:
    """First-pass statistics of a score matrix (or of a block of it); additive.

    ``level0`` counts the top key digit with NaN scores in bin 0 (their key is
    only known once the minimum of the whole matrix is).
    """

    bits: int
    level0: np.ndarray  # (2**16,) int64
    nan_count: int
    min_key: int  # smallest non-NaN key, unsigned; MASK64 when there is none
    max_key: int  # largest non-NaN key, unsigned; 0 when there is none
    numel: int

    @classmethod
    def of(cls, scores: torch.Tensor) -> "KeyStats":
        """One ``key_histogram`` pass over `scores` (P, G)."""
        bits = key_bits_of(scores)
        hist, stats = key_histogram(scores, bits - DIGIT_BITS, DIGIT_BITS,
                                    _NO_PREFIX.to(scores.device), bits, 0)
        nan_count, min_key, max_key = (int(v) for v in stats.cpu().tolist())
        return cls(bits, hist[0].cpu().numpy().astype(np.int64), nan_count,
                   _keys.to_unsigned64(min_key), _keys.to_unsigned64(max_key), scores.numel())

    @classmethod
    def merge(cls, parts: Sequence["KeyStats"]) -> "KeyStats":
        """The statistics of the union of the blocks `parts` (at least one)."""
        first = parts[0]
        if len(parts) == 1:
            return first
        if any(p.bits != first.bits for p in parts):
            raise ValueError("scores: every block must have the same dtype")
        return cls(first.bits, np.sum([p.level0 for p in parts], axis=0),
                   sum(p.nan_count for p in parts), min(p.min_key for p in parts),
                   max(p.max_key for p in parts), sum(p.numel for p in parts))

    def nonfinite(self) -> dict:
        """{"nan", "posinf", "neginf"} entry counts, read off the first pass: the top
        digit's bin of the +inf (-inf) key holds no other key (the rest of that bin's
        bit patterns are NaN, whose key is 0), so nothing is read again."""
        top = self.bits - DIGIT_BITS
        pinf, ninf = (int(k) >> top for k in _keys.keys(np.array([np.inf, -np.inf]), self.bits))
        return {"nan": int(self.nan_count), "posinf": int(self.level0[pinf]),
                "neginf": int(self.level0[ninf])}

    def as_array(self) -> np.ndarray:
        """(2**16 + 4,) int64: level0 then nan_count, min, max (as int64 bits), numel."""
        tail = [self.nan_count, _keys.to_signed64(self.min_key), _keys.to_signed64(self.max_key),
                self.numel]
        return np.concatenate([self.level0, np.asarray(tail, dtype=np.int64)])

    @classmethod
    def from_arrays(cls, bits: int, rows: np.ndarray) -> "KeyStats":
        """Merge the (R, 2**16 + 4) rows written by :meth:`as_array` (one per shard)."""
        rows = np.atleast_2d(rows)
        return cls.merge([cls(bits, r[:-4].copy(), int(r[-4]), _keys.to_unsigned64(int(r[-3])),
                              _keys.to_unsigned64(int(r[-2])), int(r[-1])) for r in rows])


def block_histogram(scores: torch.Tensor, shift: int, prefixes: Sequence[int],
                    nan_key: int) -> np.ndarray:
    """(len(prefixes), 2**16) int64 histogram of one digit of the keys of `scores`."""
    pre_t = torch.tensor([_keys.to_signed64(p) for p in prefixes], dtype=torch.int64,
                         device=scores.device)
    h, _ = key_histogram(scores, shift, DIGIT_BITS, pre_t, shift + DIGIT_BITS,
                         _keys.to_signed64(nan_key))
    return h.cpu().numpy().astype(np.int64)


@dataclass
class ImpostorKeys:
    """The impostor-score distribution of one matrix, ready for rank queries."""

    histogram: HistogramPass  # a further pass over the whole matrix
    bits: int  # key width: 32 or 64
    nan_key: int  # key NaN scores take (the minimum non-NaN score's key)
    level0: np.ndarray  # (2**16,) impostor counts of the top digit
    genuine_keys: np.ndarray  # (N_gen,) uint64 keys of the genuine scores, NaN replaced
    num_impostor: int

    @property
    def shifts(self) -> list[int]:
        return list(range(self.bits - DIGIT_BITS, -1, -DIGIT_BITS))


def build_impostor_keys(stats: KeyStats, genuine_values: np.ndarray,
                        histogram: HistogramPass) -> ImpostorKeys:
    """The impostor distribution from the whole matrix's first-pass `stats`.

    `genuine_values` (N_gen,) are the genuine scores (float64 widened, NaN kept),
    `histogram` runs the later digit passes. NaN scores are replaced by the
    minimum non-NaN score (0.0 if all are NaN), following the QME reference.
    """
    bits, top = stats.bits, stats.bits - DIGIT_BITS
    hist = stats.level0.copy()
    if stats.nan_count == stats.numel:
        nan_key = int(_keys.keys(np.array([0.0]), bits)[0])
    else:
        nan_key = stats.min_key
    if stats.nan_count:
        hist[0] -= stats.nan_count  # key 0 (NaN) lives in bin 0 on the first pass
        hist[nan_key >> top] += stats.nan_count
    gkeys = _keys.keys(genuine_values, bits)
    gkeys[gkeys == 0] = nan_key
    hist -= np.bincount((gkeys >> np.uint64(top)).astype(np.int64), minlength=1 << DIGIT_BITS)
    return ImpostorKeys(histogram, bits, nan_key, hist, gkeys, int(hist.sum()))


def _walk_desc(hist: np.ndarray, rank: int) -> tuple[int, int, int]:
    """Bin holding the rank-th largest (1-based) -> (bin, count above the bin, count in bin)."""
    rev = hist[::-1]
    cum = np.cumsum(rev)
    i = int(np.searchsorted(cum, rank, side="left"))
    return len(hist) - 1 - i, int(cum[i] - rev[i]), int(rev[i])


def select_desc(imp: ImpostorKeys, ranks: list[int]) -> list[tuple[int, int, int]]:
    """For each 1-based rank r <= N_imp: (key of the r-th largest impostor score,
    #impostors with a strictly larger key, #impostors with exactly that key)."""
    for r in ranks:
        if not 1 <= r <= imp.num_impostor:
            raise ValueError(f"rank {r} outside 1..{imp.num_impostor}")
    prefix = [0] * len(ranks)
    above = [0] * len(ranks)
    result: list[tuple[int, int, int]] = [(0, 0, 0)] * len(ranks)
    shifts = imp.shifts
    for level, shift in enumerate(shifts):
        if level == 0:
            hists = {0: imp.level0}
        else:
            wanted = sorted(set(prefix))
            h = imp.histogram(shift, wanted, imp.nan_key)
            gk = imp.genuine_keys
            hists = {}
            for f, p in enumerate(wanted):
                sel = (gk >> np.uint64(shift + DIGIT_BITS)) == np.uint64(p)
                digits = ((gk[sel] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64)
                hists[p] = h[f] - np.bincount(digits, minlength=1 << DIGIT_BITS)
        for i, r in enumerate(ranks):
            b, before, inbin = _walk_desc(hists[prefix[i] if level else 0], r - above[i])
            above[i] += before
            prefix[i] = (prefix[i] << DIGIT_BITS) | b
            if level == len(shifts) - 1:
                result[i] = (prefix[i], above[i], inbin)
    return result


# ---------------------------------------------------------------------------
# the first refinement digit in the same walk (issue 29)
# ---------------------------------------------------------------------------
# Top-digit bins whose next digit is counted while walking: at most this many
# (each holds 2**16 int64 counts, 512 KiB: 24 MiB in all, whatever the matrix size;
# the key_histogram call that counts a block holds 12 bytes per count per thread more).
MAX_CANDIDATE_BINS = 48
# A FAR's threshold rank, estimated from the first block, may be off by this factor
# (and by CANDIDATE_PAD bins either side) before the walk must be repeated.
CANDIDATE_RANK_FACTOR = 4.0
CANDIDATE_PAD = 2


class CandidateBins:
    """The refinement digit of the top-digit bins that can hold a FAR's threshold,
    counted in the walk that counts the top digit, so that (32-bit keys) no second
    walk over the matrix is needed.

    The bins are chosen from the first block: for each FAR its threshold rank among
    the impostors, scaled to the block's share of the matrix, widened by
    :data:`CANDIDATE_RANK_FACTOR` both ways and :data:`CANDIDATE_PAD` bins. Every block
    (the first included) then adds its histogram of the next digit of the keys under
    those bins (one ``key_histogram`` call, NaN scores excluded: their key is the
    minimum of the whole matrix, known only at the end, and is added by
    :meth:`lookup`). :meth:`lookup` answers a :data:`HistogramPass` request from these
    counts when every wanted prefix is a candidate, else None and the caller walks
    again: a first block whose scores stand far from the rest's (rows in a sorted
    order, say) is the only way to get there. The counts are integers summed over the
    same entries a walk would count, so the answer is the walk's, bit for bit.
    """

    def __init__(self, bits: int, fars: Sequence[float], numel: int, num_genuine: int):
        self.bits, self.fars = bits, list(fars)
        self.numel, self.num_genuine = numel, num_genuine
        self.shift = bits - 2 * DIGIT_BITS  # the digit below the top one
        self.prefixes: list[int] = []  # chosen top-digit bins, ascending
        self.rows = None  # (len(prefixes), 2**16) int64, summed over the blocks
        self.chosen = False

    def _choose(self, part: KeyStats, block_genuine: np.ndarray) -> None:
        if part.numel == self.numel:  # the first block is the whole matrix: exact bins
            self._choose_exact(part, block_genuine)
            return
        top = self.bits - DIGIT_BITS
        hist = part.level0.copy()
        hist[0] -= part.nan_count  # NaN scores: the bottom of the order, never a threshold here
        gk = _keys.keys(block_genuine, self.bits)
        gk = gk[gk != 0]
        hist -= np.bincount((gk >> np.uint64(top)).astype(np.int64), minlength=hist.size)
        n_block = int(hist.sum())
        n_imp = max(self.numel - self.num_genuine, 1)
        share = part.numel / max(self.numel, 1)
        cum = np.cumsum(hist[::-1])  # impostors at or above each bin, from the top
        nb = hist.size
        per_far = []
        for far in self.fars:
            rank = max(far * n_imp, 1.0) * share  # the threshold's rank in this block
            lo_rank = max(rank / CANDIDATE_RANK_FACTOR, 1.0)
            hi_rank = min(rank * CANDIDATE_RANK_FACTOR, float(max(n_block, 1)))
            # bins (ascending keys) holding ranks lo_rank (highest) .. hi_rank (lowest)
            b_hi = nb - 1 - int(np.searchsorted(cum, lo_rank, side="left"))
            b_lo = nb - 1 - int(np.searchsorted(cum, hi_rank, side="left"))
            b_hi, b_lo = min(max(b_hi, 0), nb - 1), min(max(b_lo, 0), nb - 1)
            centre = nb - 1 - int(np.searchsorted(cum, min(max(rank, 1.0), max(n_block, 1)),
                                                  side="left"))
            span = range(max(b_lo - CANDIDATE_PAD, 1), min(b_hi + CANDIDATE_PAD, nb - 1) + 1)
            # nearest the estimate first, so a cap keeps the likeliest bins
            per_far.append(sorted(span, key=lambda b, c=centre: (abs(b - c), b)))
        chosen: set = set()
        for k in range(max((len(p) for p in per_far), default=0)):
            for p in per_far:
                if k < len(p) and len(chosen) < MAX_CANDIDATE_BINS:
                    chosen.add(p[k])
        self.prefixes = sorted(chosen)
        self.chosen = True

    def _choose_exact(self, part: KeyStats, genuine: np.ndarray) -> None:
        """The bins of the thresholds' ranks (both conventions' k, and one rank either
        side), from the impostor histogram the select will see: nothing else is counted."""
        imp = build_impostor_keys(part, genuine, None)
        n = imp.num_impostor
        chosen = set()
        for far in self.fars:
            for k in (_smallest_k_at_least(far, n), _largest_k_at_most(far, n)):
                for r in (k - 1, k, k + 1):
                    if 1 <= r <= n:
                        chosen.add(_walk_desc(imp.level0, r)[0])
        chosen.discard(0)
        self.prefixes = sorted(chosen)[:MAX_CANDIDATE_BINS]
        self.chosen = True

    def add(self, scores: torch.Tensor, part: KeyStats, block_genuine: np.ndarray) -> None:
        """Count the refinement digit of block `scores` (whose first pass is `part`, its
        genuine scores `block_genuine`) under the candidate bins."""
        if not self.chosen:
            self._choose(part, block_genuine)
        if not self.prefixes:
            return
        pre_t = torch.tensor([_keys.to_signed64(p) for p in self.prefixes], dtype=torch.int64,
                             device=scores.device)
        # nan_key 0: a NaN's key stays 0, under prefix 0, which is never a candidate
        h, _ = key_histogram(scores, self.shift, DIGIT_BITS, pre_t, self.shift + DIGIT_BITS, 0)
        h = h.cpu().numpy()
        if self.rows is None:
            self.rows = h  # int64, this pass's own buffer
        else:
            self.rows += h  # in place: one set of counts held, whatever the blocks

    def lookup(self, shift: int, prefixes: Sequence[int], nan_key: int,
               nan_count: int) -> "np.ndarray | None":
        """The :data:`HistogramPass` answer for (shift, prefixes, nan_key) from the
        counts, or None when they do not hold it (another digit, a prefix not chosen)."""
        if shift != self.shift or self.rows is None:
            return None
        where = {p: i for i, p in enumerate(self.prefixes)}
        if any(int(p) not in where for p in prefixes):
            return None
        out = self.rows[[where[int(p)] for p in prefixes]].copy()
        if nan_count:  # the NaN scores take nan_key, a count the walk would have made
            nan_pre = nan_key >> (shift + DIGIT_BITS)
            digit = (nan_key >> shift) & ((1 << DIGIT_BITS) - 1)
            for i, p in enumerate(prefixes):
                if int(p) == nan_pre:
                    out[i, digit] += nan_count
        return out


# the order statistics of a FAR over n impostors (float64 comparisons, as the reference's
# fpr): used by the TAR@FAR families of core and the candidate bins here
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
