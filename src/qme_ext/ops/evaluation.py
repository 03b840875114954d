"""The evaluation engine's custom ops: ``qme_ext::rank_counts`` (per-probe first hit,
AP and #good of the ranking), ``qme_ext::key_histogram`` (the radix-select digit
histograms of TAR@FAR) and ``qme_ext::openset_stats`` (the open-set per-probe maxima).

``register_fake`` gives the output shapes so the ops trace under torch.compile. These
are integer order statistics: they have no autograd formula.
"""
from __future__ import annotations

import torch

from . import backend as _backend
from .common import (check_row_csr, check_vector, device_guard, matrix_descriptor,
                     module_and_extra, module_and_stream)
from .keys import to_unsigned64


# ---- rank_counts ----------------------------------------------------------------
def _check_candidates(scores, cand_offsets, cand_index, cand_flags, max_candidates) -> None:
    G = scores.shape[1]
    nnz, longest = check_row_csr(scores, "cand_offsets", cand_offsets,
                                 (("cand_index", cand_index, torch.int64),
                                  ("cand_flags", cand_flags, torch.uint8)))
    if max_candidates < longest:
        raise ValueError(f"max_candidates: expected >= {longest} (the longest row of "
                         f"candidates), got {max_candidates}")
    if nnz and (int(cand_index.min()) < 0 or int(cand_index.max()) >= G):
        raise ValueError(f"cand_index: gallery columns must lie in [0, {G - 1}]")


@torch.library.custom_op("qme_ext::rank_counts", mutates_args=())
def rank_counts(
    scores: torch.Tensor,  # (P, G) float32/float64/float16/bfloat16
    cand_offsets: torch.Tensor,  # (P + 1,) int64 CSR offsets
    cand_index: torch.Tensor,  # (nnz,) int64 same-pid gallery columns
    cand_flags: torch.Tensor,  # (nnz,) uint8 bit 2m good / 2m+1 junk in mode m
    num_modes: int,
    max_candidates: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per mode and probe: first good position (int64, -1 if none), AP (float64), #good
    (int64), last good position (int64, -1 if none; mINP's denominator), and with
    R = #good (Musgrave et al. 2020): ``r_hits`` (int64, goods at positions < R;
    R-precision = r_hits / R) and ``map_r`` (float64, MAP@R = (1/R) sum over those goods
    of i / (p_i + 1); 0 if R = 0).

    Positions are 0-based, counted after junk removal. Outputs have shape (num_modes, P).
    """
    P = scores.shape[0]
    dev = scores.device
    first_pos = torch.empty((num_modes, P), dtype=torch.int64, device=dev)
    ap = torch.empty((num_modes, P), dtype=torch.float64, device=dev)
    num_good = torch.empty((num_modes, P), dtype=torch.int64, device=dev)
    last_pos = torch.empty((num_modes, P), dtype=torch.int64, device=dev)
    r_hits = torch.empty((num_modes, P), dtype=torch.int64, device=dev)
    map_r = torch.empty((num_modes, P), dtype=torch.float64, device=dev)
    outs = (first_pos, ap, num_good, last_pos, r_hits, map_r)
    if P == 0:
        return outs
    _check_candidates(scores, cand_offsets, cand_index, cand_flags, max_candidates)
    cand_offsets, cand_index, cand_flags = (t.contiguous() for t in
                                            (cand_offsets, cand_index, cand_flags))
    desc = matrix_descriptor(scores)
    with device_guard(scores):
        mod, extra, _ws = module_and_extra(
            dev, lambda m: m.rank_counts_workspace(desc, num_modes, max_candidates))
        mod.rank_counts(desc, cand_offsets.data_ptr(), cand_index.data_ptr(), cand_flags.data_ptr(),
                        num_modes, max_candidates, first_pos.data_ptr(), ap.data_ptr(),
                        num_good.data_ptr(), last_pos.data_ptr(), r_hits.data_ptr(),
                        map_r.data_ptr(), *extra)
    return outs


@rank_counts.register_fake
def _(scores, cand_offsets, cand_index, cand_flags, num_modes, max_candidates):
    P = scores.shape[0]
    return tuple(scores.new_empty((num_modes, P), dtype=dt)
                 for dt in (torch.int64, torch.float64, torch.int64, torch.int64, torch.int64,
                            torch.float64))


# ---- key_histogram ----------------------------------------------------------------
@torch.library.custom_op("qme_ext::key_histogram", mutates_args=())
def key_histogram(
    scores: torch.Tensor,  # (P, G) scores
    digit_shift: int,
    digit_bits: int,
    prefixes: torch.Tensor,  # (F,) int64 bit patterns of key prefixes; F = 0: no filter
    prefix_shift: int,
    nan_key: int,  # int64 bit pattern of the key given to NaN scores
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of one radix digit of the score keys.

    Returns ``hist`` (max(F, 1), 2**digit_bits) int64 and ``stats`` (3,) int64 =
    [number of NaN scores, smallest non-NaN key, largest non-NaN key] (keys as
    int64 bit patterns).
    """
    dev = scores.device
    check_vector(prefixes, "prefixes", None, torch.int64, dev)
    prefixes = prefixes.contiguous()
    F = prefixes.shape[0]
    hist = torch.zeros((max(F, 1), 1 << digit_bits), dtype=torch.int64, device=dev)
    stats = torch.zeros(3, dtype=torch.int64, device=dev)
    stats[1] = -1  # all ones: no non-NaN key seen
    if scores.numel() == 0:
        return hist, stats
    desc = matrix_descriptor(scores)
    base = stats.data_ptr()
    with device_guard(scores):
        mod, extra, _ws = module_and_extra(
            dev, lambda m: m.key_histogram_workspace(desc, digit_bits, F))
        mod.key_histogram(desc, digit_shift, digit_bits, F, prefixes.data_ptr() if F else 0,
                          prefix_shift, to_unsigned64(nan_key), hist.data_ptr(), base, base + 8,
                          base + 16, *extra)
    return hist, stats


@key_histogram.register_fake
def _(scores, digit_shift, digit_bits, prefixes, prefix_shift, nan_key):
    F = prefixes.shape[0]
    return (scores.new_empty((max(F, 1), 1 << digit_bits), dtype=torch.int64),
            scores.new_empty((3,), dtype=torch.int64))


# ---- openset_stats ----------------------------------------------------------------
def _check_openset_indices(merge_scores, genuine_col, enrolled) -> None:
    # The kernels index columns with genuine_col; the CUDA twin cannot throw from a
    # kernel, so an out-of-range column is refused here, before any pointer is used.
    P, S = merge_scores.shape
    if genuine_col.shape != (P,) or genuine_col.dtype != torch.int64:
        raise ValueError(f"genuine_col: expected an int64 tensor of shape ({P},), got "
                         f"{genuine_col.dtype} of shape {tuple(genuine_col.shape)}")
    if enrolled.dim() != 2 or enrolled.shape[1] != S or enrolled.dtype != torch.uint8:
        raise ValueError(f"enrolled: expected a uint8 tensor of shape (n_splits, {S}), got "
                         f"{enrolled.dtype} of shape {tuple(enrolled.shape)}")
    if genuine_col.device != merge_scores.device or enrolled.device != merge_scores.device:
        raise ValueError("genuine_col, enrolled: must be on the device of merge_scores "
                         f"({merge_scores.device})")
    lo, hi = int(genuine_col.min()), int(genuine_col.max())
    if lo < -1 or hi >= S:
        raise ValueError(f"genuine_col: column indices must lie in [-1, {S - 1}], "
                         f"got values in [{lo}, {hi}]")


@torch.library.custom_op("qme_ext::openset_stats", mutates_args=())
def openset_stats(
    merge_scores: torch.Tensor,  # (P, S) merge scores, one column per subject
    genuine_col: torch.Tensor,  # (P,) int64 own-subject column or -1
    enrolled: torch.Tensor,  # (n_splits, S) uint8 enrolment masks
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per split and probe: best enrolled non-genuine score (float64, -inf if none)
    and the number of enrolled non-genuine columns scoring >= the genuine one, both
    (n_splits, P); and ``nonfinite`` (3,) int64: the NaN, +inf and -inf entries of the
    whole matrix (every column), counted in the same read."""
    P = merge_scores.shape[0]
    NS = enrolled.shape[0]
    dev = merge_scores.device
    max_other = torch.empty((NS, P), dtype=torch.float64, device=dev)
    num_ge = torch.empty((NS, P), dtype=torch.int64, device=dev)
    nonfinite = torch.zeros(3, dtype=torch.int64, device=dev)
    if P == 0:
        return max_other, num_ge, nonfinite
    _check_openset_indices(merge_scores, genuine_col, enrolled)
    genuine_col, enrolled = genuine_col.contiguous(), enrolled.contiguous()
    desc = matrix_descriptor(merge_scores)
    with device_guard(merge_scores):
        mod, extra, _ws = module_and_extra(dev, lambda m: m.openset_stats_workspace(desc, NS))
        mod.openset_stats(desc, genuine_col.data_ptr(), enrolled.data_ptr(), NS,
                          max_other.data_ptr(), num_ge.data_ptr(), nonfinite.data_ptr(), *extra)
    return max_other, num_ge, nonfinite


@openset_stats.register_fake
def _(merge_scores, genuine_col, enrolled):
    P = merge_scores.shape[0]
    NS = enrolled.shape[0]
    return (merge_scores.new_empty((NS, P), dtype=torch.float64),
            merge_scores.new_empty((NS, P), dtype=torch.int64),
            merge_scores.new_empty((3,), dtype=torch.int64))
