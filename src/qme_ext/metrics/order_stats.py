"""Exact order statistics of the impostor scores by radix select (SPEC 2.2, 6).

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
