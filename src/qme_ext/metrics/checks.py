"""The one validation of an evaluation's inputs that every path goes through: the
in-memory :func:`qme_ext.metrics.evaluate`, the out-of-core
:func:`qme_ext.metrics.evaluate_file`, and ``qme-ext evaluate`` with and without
``--max-memory`` (which call it before reading any matrix, so that a bad file is one
line, never a traceback half-way through a report).

What it refuses, each a ValueError naming the argument: a seed outside numpy's
[0, 2**32 - 1]; no probe, no gallery entry or no subject; ``unique_g_pids`` with a
duplicate, or without a column for a subject of ``g_pids`` (docs/definitions.rst, §1: one merge column
per gallery subject; a column for a subject without gallery entries is accepted: it is
enrolled in the open-set splits like any other); no genuine pair (no mated probe); no
impostor pair (e.g. a 1 x 1 file).
What each enrolment split needs (a mated and a non-mated probe) is checked where the
splits are drawn.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..ops.inputs import as_ids, check_seed

__all__ = ["check_evaluation"]


def _few(values) -> str:
    values = np.asarray(values).tolist()
    return str(values[:5])[:-1] + (", ...]" if len(values) > 5 else "]")


def check_evaluation(q_pids, g_pids, unique_g_pids, seed, shape: Optional[tuple] = None,
                     num_subjects: Optional[int] = None) -> None:
    """Check the id vectors of a whole evaluation, q_pids (P,), g_pids (G,), unique_g_pids
    (S,) (arrays or tensors, as :func:`qme_ext.metrics.evaluate` takes them; None: the
    distinct ``g_pids``, as :func:`qme_ext.metrics.evaluate_embeddings` derives them),
    against the matrices' ``shape`` (P, G) and ``num_subjects`` S when given, and the split
    ``seed``; ValueError (TypeError for a wrong dtype) naming what is wrong."""
    check_seed(seed)
    cpu = torch.device("cpu")
    if unique_g_pids is None:
        unique_g_pids = np.unique(as_ids(g_pids, "g_pids", len(g_pids), cpu).numpy())
    P, G = shape if shape is not None else (len(q_pids), len(g_pids))
    S = len(unique_g_pids) if num_subjects is None else num_subjects
    if P == 0:
        raise ValueError("q_pids: no probe (0 rows); nothing to evaluate")
    if G == 0:
        raise ValueError("g_pids: empty gallery (0 entries); nothing to evaluate")
    if S == 0:
        raise ValueError("unique_g_pids: no gallery subject (0 merge_score_mat columns)")
    q_pids = as_ids(q_pids, "q_pids", P, cpu).numpy()
    g_pids = as_ids(g_pids, "g_pids", G, cpu).numpy()
    unique_g_pids = as_ids(unique_g_pids, "unique_g_pids", S, cpu).numpy()
    subjects, counts = np.unique(unique_g_pids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"unique_g_pids: duplicate subject ids {_few(subjects[counts > 1])} "
                         "(one merge_score_mat column per gallery subject)")
    gallery = np.unique(g_pids)
    missing = np.setdiff1d(gallery, subjects, assume_unique=True)
    if missing.size:
        raise ValueError(f"unique_g_pids: no merge_score_mat column for {missing.size} gallery "
                         f"subject(s) of g_pids, e.g. {_few(missing)} (one column per gallery "
                         "subject)")
    mated = np.isin(q_pids, gallery)
    if not mated.any():
        raise ValueError("q_pids/g_pids: no mated probe (no probe's pid is in the gallery): "
                         "rank, TAR and open-set metrics need at least one genuine pair")
    if gallery.size == 1 and (q_pids == gallery[0]).all():
        raise ValueError("q_pids/g_pids: no impostor pair (every probe and every gallery entry "
                         "share one pid); TAR@FAR and open-set metrics need impostors")
