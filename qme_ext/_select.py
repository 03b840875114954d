"""Exact order statistics of the impostor scores by radix select (SPEC 2.2, 6).

The full matrix is histogrammed one 16-bit key digit at a time by the
``key_histogram`` kernel; genuine pairs (same pid, few) are gathered on the side
and subtracted, so no P x G mask is ever built and nothing is sorted. A 32-bit
key needs two passes, a 64-bit key four; all requested ranks share each pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _keys
from ._ops import key_histogram

DIGIT_BITS = 16


@dataclass
class ImpostorKeys:
    """The impostor-score distribution of one matrix, ready for rank queries."""

    scores: torch.Tensor  # (P, G)
    bits: int  # key width: 32 or 64
    nan_key: int  # key NaN scores take (the minimum non-NaN score's key)
    level0: np.ndarray  # (2**16,) impostor counts of the top digit
    genuine_keys: np.ndarray  # (N_gen,) uint64 keys of the genuine scores, NaN replaced
    num_impostor: int

    @property
    def shifts(self) -> list[int]:
        return list(range(self.bits - DIGIT_BITS, -1, -DIGIT_BITS))


def build_impostor_keys(scores: torch.Tensor, genuine_values: np.ndarray) -> ImpostorKeys:
    """First pass over `scores`: top-digit histogram, NaN count and min/max keys.

    `genuine_values` (N_gen,) are the genuine scores (float64 widened, NaN kept).
    NaN scores are replaced by the minimum non-NaN score (0.0 if all are NaN),
    following the QME reference.
    """
    bits = 64 if scores.dtype == torch.float64 else 32
    top = bits - DIGIT_BITS
    empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
    hist, stats = key_histogram(scores, top, DIGIT_BITS, empty, bits, 0)
    hist = hist[0].cpu().numpy().astype(np.int64)
    nan_count, min_key, _max_key = (int(v) for v in stats.cpu().tolist())
    if nan_count == scores.numel():
        nan_key = int(_keys.keys(np.array([0.0]), bits)[0])
    else:
        nan_key = _keys.to_unsigned64(min_key)
    if nan_count:
        hist[0] -= nan_count  # key 0 (NaN) lives in bin 0 on the first pass
        hist[nan_key >> top] += nan_count
    gkeys = _keys.keys(genuine_values, bits)
    gkeys[gkeys == 0] = nan_key
    hist -= np.bincount((gkeys >> np.uint64(top)).astype(np.int64), minlength=1 << DIGIT_BITS)
    return ImpostorKeys(scores, bits, nan_key, hist, gkeys, int(hist.sum()))


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
            pre_t = torch.tensor([_keys.to_signed64(p) for p in wanted], dtype=torch.int64,
                                 device=imp.scores.device)
            h, _ = key_histogram(imp.scores, shift, DIGIT_BITS, pre_t, shift + DIGIT_BITS,
                                 _keys.to_signed64(imp.nan_key))
            h = h.cpu().numpy().astype(np.int64)
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
