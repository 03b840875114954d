"""Leave-subject-out open-set searches: every probe is also a non-mated search.

A validation split of ~60 probes with the paper's 10 enrolment splits leaves a handful of
non-mated searches, so FNIR@1%FPIR there is set by one or two rows and says nothing about the
upper tail of the impostor scores that sets the test threshold (issue 19: ``FNIR 0.000`` on
validation, 21.85% on test). Here each mated probe also searches once *without its own
subject* (its row with its own subject's column taken out): its best impostor score is a
non-mated maximum. With every gallery subject enrolled, the non-mated searches are the
unknown subjects' probes plus one leave-subject-out (LSO) search per mated probe, so the
threshold at 1% FPIR is an order statistic of hundreds of maxima, and the mated searches are
all mated probes. The metric itself is :func:`qme_ext.metrics.fnir_at_fpir`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["impostor_maxima", "subject_maxima", "lso_fnir"]


def impostor_maxima(scores: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    genuine: bool = False) -> np.ndarray:
    """(P,) float64: each probe's best score over the columns of *other* subjects (its
    leave-subject-out search), or with ``genuine`` over its own subject's columns.

    scores (P, G), q_pids (P,), g_pids (G,); -inf for a probe with no such column.
    """
    s = np.asarray(scores, dtype=np.float64)
    imp = (np.asarray(q_pids).reshape(-1, 1) != np.asarray(g_pids).reshape(1, -1)) != genuine
    if s.shape[1] == 0:
        return np.full(s.shape[0], -np.inf)
    return np.where(imp, s, -np.inf).max(axis=1)


def subject_maxima(scores: np.ndarray, g_pids: np.ndarray) -> tuple:
    """((P, S) per-subject maximum over that subject's columns, (S,) sorted subject ids).

    Turns a probe-vs-centres matrix (a training split, which has no merge matrix) into a
    one-column-per-subject matrix for open-set searches.
    """
    s = np.asarray(scores, dtype=np.float64)
    subjects, col = np.unique(np.asarray(g_pids), return_inverse=True)
    out = np.full((s.shape[0], subjects.size), -np.inf)
    for j in range(subjects.size):
        out[:, j] = s[:, col == j].max(axis=1)
    return out, subjects


def lso_fnir(merge: np.ndarray, q_pids: np.ndarray, subject_ids: np.ndarray,
             fpirs: Sequence[float] = (0.001, 0.01, 0.1)) -> dict:
    """FNIR at each FPIR with every probe also a leave-subject-out non-mated search.

    merge (P, S) one column per subject (ids ``subject_ids`` (S,)), q_pids (P,). All subjects
    enrolled (one split); the non-mated searches are the rows of unknown subjects plus, for
    every mated row, a copy with its own subject's column set below every score. Returns
    ``{"FNIR@x.xx%FPIR": fraction}`` and ``{"num_nonmated": n}``.
    """
    from ..metrics.core import fnir_at_fpir
    m = np.asarray(merge, dtype=np.float64)
    sid = np.asarray(subject_ids, dtype=np.int64)
    qp = np.asarray(q_pids, dtype=np.int64)
    col = {int(s): j for j, s in enumerate(sid)}
    mated = np.flatnonzero(np.isin(qp, sid))
    finite = m[np.isfinite(m)]
    low = (finite.min() if finite.size else 0.0) - 1.0
    copies = m[mated].copy()
    copies[np.arange(mated.size), [col[int(p)] for p in qp[mated]]] = low
    unknown = min(int(sid.min()), int(qp.min())) - 1           # enrolled in no split
    rows = np.concatenate([np.where(np.isfinite(m), m, low), copies])
    pids = np.concatenate([qp, np.full(mated.size, unknown, dtype=np.int64)])
    res = fnir_at_fpir(rows, pids, sid, fpirs=list(fpirs), splits=[sid])
    out = {f"FNIR@{100 * f:.2f}%FPIR": float(v) for f, v in zip(fpirs, res.fnir_mean)}
    out["num_nonmated"] = int(rows.shape[0] - mated.size)
    return out
