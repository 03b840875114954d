"""The open-set enrolment splits: which subjects are enrolled in each of the
``n_splits`` random galleries of FNIR@FPIR (docs/definitions.rst, §2.3). ``qme_splits`` reproduces the QME
reference's legacy global-RNG draw exactly; ``numpy_splits`` uses a modern Generator.
The reference oracle (``qme_ext.reference.metrics``) imports them from here.
"""
from __future__ import annotations

import numpy as np

__all__ = ["qme_splits", "numpy_splits"]


def qme_splits(unique_g_pids, n_splits=10, keep_fraction=0.8, seed=45):
    """Enrolment splits exactly as the QME reference draws them (legacy global RNG).

    The reference calls ``np.random.seed(seed)``, then ``n_splits`` times
    ``np.sort(np.random.choice(ids, int(len(ids) * keep_fraction), replace=False))``. The legacy
    global functions are methods of one hidden ``RandomState``, so a private
    ``RandomState(seed)`` draws the identical sequence without touching the global state, which
    keeps concurrent calls from different threads from interleaving their draws.

    Returns a list of ``n_splits`` sorted arrays of ``int(n * keep_fraction)`` subject ids.
    """
    ids = np.asarray(unique_g_pids)
    n_keep = int(len(ids) * keep_fraction)
    rng = np.random.RandomState(seed)
    return [np.sort(rng.choice(ids, n_keep, replace=False)) for _ in range(n_splits)]


def numpy_splits(unique_g_pids, n_splits=10, keep_fraction=0.8, seed=45):
    """Like :func:`qme_splits` but drawn from ``np.random.default_rng(seed)`` (no global state)."""
    ids = np.asarray(unique_g_pids)
    n_keep = int(len(ids) * keep_fraction)
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(ids, n_keep, replace=False)) for _ in range(n_splits)]
