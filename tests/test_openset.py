"""fnir_at_fpir (openset_stats kernel) against the numpy reference."""
import numpy as np
import pytest
import torch

from conftest import to_device
from qme_ext import metrics
from qme_ext.reference import fnir_at_fpir_ref, qme_splits

FPIRS = (1e-4, 1e-3, 1e-2, 0.1, 0.3)


def _merge_problem(seed, P=300, S=40, unknown=0.3, ties=False, nan_frac=0.0):
    rng = np.random.default_rng(seed)
    subjects = np.sort(rng.choice(1000, S, replace=False))
    q = rng.choice(subjects, P)
    q = np.where(rng.random(P) < unknown, 5000 + rng.integers(0, 50, P), q)
    M = rng.normal(size=(P, S))
    M[q[:, None] == subjects[None, :]] += 2.0
    if ties:
        M = np.round(M * 2) / 2
    if nan_frac:
        M[rng.random(M.shape) < nan_frac] = np.nan
    return M.astype(np.float32), q, subjects


def _check(res, ref):
    np.testing.assert_allclose(res.fnir, ref["fnir"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.tpir, ref["tpir"], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(res.threshold, ref["threshold"])
    np.testing.assert_allclose(res.fnir_mean, ref["fnir_mean"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.fnir_std, ref["fnir_std"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed,ties,nan", [(0, False, 0.0), (1, True, 0.0), (2, True, 0.05)])
@pytest.mark.parametrize("rank", [1, 3])
def test_matches_reference(device, seed, ties, nan, rank):
    M, q, subjects = _merge_problem(seed, ties=ties, nan_frac=nan)
    res = metrics.fnir_at_fpir(to_device(M, device), q, subjects, FPIRS, rank=rank)
    ref = fnir_at_fpir_ref(M, q, subjects, FPIRS, rank=rank)
    _check(res, ref)


def test_default_splits_are_the_qme_draw():
    M, q, subjects = _merge_problem(3)
    res = metrics.fnir_at_fpir(M, q, subjects)
    expected = qme_splits(subjects, 10, 0.8, 45)
    assert len(res.splits) == 10
    for a, b in zip(res.splits, expected):
        np.testing.assert_array_equal(a, b)


def test_explicit_splits_and_numpy_rng(device):
    M, q, subjects = _merge_problem(4)
    splits = [subjects[:30], subjects[5:35]]
    res = metrics.fnir_at_fpir(to_device(M, device), q, subjects, FPIRS, splits=splits)
    _check(res, fnir_at_fpir_ref(M, q, subjects, FPIRS, splits=splits))
    res2 = metrics.fnir_at_fpir(M, q, subjects, FPIRS, split_rng="numpy", n_splits=3, seed=7)
    _check(res2, fnir_at_fpir_ref(M, q, subjects, FPIRS, split_rng="numpy", n_splits=3, seed=7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    M, q, subjects = _merge_problem(5)
    t = torch.from_numpy(M).to(dtype)
    res = metrics.fnir_at_fpir(t.to(device), q, subjects, FPIRS)
    _check(res, fnir_at_fpir_ref(t.to(torch.float64).numpy(), q, subjects, FPIRS))


def test_tie_at_rank_one_is_not_a_hit():
    # subjects 1, 2; probe 0 (pid 1) ties with subject 2; probe 1 unknown
    M = np.array([[0.5, 0.5], [0.1, 0.2], [0.9, 0.1]], dtype=np.float32)
    res = metrics.fnir_at_fpir(M, [1, 7, 1], [1, 2], fpirs=(1.0,), splits=[[1, 2]])
    # t: non-mated maxima [0.2], k = 1 -> 0.2; probe 0 tie -> miss; probe 2 hit
    assert res.threshold[0, 0] == np.float32(0.2)
    assert res.tpir[0, 0] == 0.5


def test_errors():
    M, q, subjects = _merge_problem(6)
    with pytest.raises(ValueError, match="subject_ids"):
        metrics.fnir_at_fpir(M, q, np.zeros_like(subjects))
    with pytest.raises(ValueError, match="splits\\[0\\]"):
        metrics.fnir_at_fpir(M, q, subjects, splits=[[123456]])
    with pytest.raises(ValueError, match="non-mated"):
        metrics.fnir_at_fpir(M[:1], [subjects[0]], subjects, splits=[subjects])
    with pytest.raises(ValueError, match="rank"):
        metrics.fnir_at_fpir(M, q, subjects, rank=0)
