"""Shared by tests/test_streaming.py and tests/test_distributed.py: evaluation inputs
with ties, NaNs, several cameras/clothes and unenrolled probes, and a bit-for-bit
comparison of two evaluate() reports."""
import numpy as np

from conftest import make_problem


def evaluation_inputs(seed=0, P=37, G=211, n_ids=15, dtype=np.float32, nan_frac=0.02):
    """(score_mat, merge_score_mat, the seven id vectors as evaluate() takes them)."""
    S, ids = make_problem(seed, P=P, G=G, n_ids=n_ids, ties=True, nan_frac=nan_frac, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    q_pids = rng.integers(0, n_ids + 3, P)  # some probes have no gallery subject
    uniq = np.unique(ids["g_pids"])
    M = np.round(rng.normal(size=(P, uniq.size)) * 4) / 4
    M[rng.random(M.shape) < nan_frac] = np.nan
    args = (q_pids, ids["q_camids"], ids["q_clothes"], ids["g_pids"], ids["g_camids"],
            ids["g_clothes"], uniq)
    return S, M.astype(dtype), args


def assert_same_report(got: dict, want: dict) -> None:
    """Same keys in the same order and the same float64 bits for every value."""
    assert list(got) == list(want)
    diff = {k: (got[k], want[k]) for k in want
            if np.float64(got[k]).view(np.int64) != np.float64(want[k]).view(np.int64)}
    assert not diff, diff
