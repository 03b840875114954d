"""rank_metrics / rank_counts kernel against the sort-based numpy reference."""
import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
from qme_ext import metrics
from qme_ext.reference import rank_metrics_ref


def _check(res, ref, atol=1e-12):
    assert res.num_valid == ref["num_valid"]
    assert res.num_skipped == ref["num_skipped"]
    np.testing.assert_allclose(res.cmc, ref["cmc"], rtol=0, atol=atol)
    assert abs(res.mAP - ref["mAP"]) <= atol
    if res.first_pos is not None:
        np.testing.assert_array_equal(res.first_pos, ref["first_pos"])
        np.testing.assert_allclose(res.ap, ref["ap"], rtol=0, atol=atol)


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_with_ties(device, mode, seed):
    S, ids = make_problem(seed)
    res = metrics.rank_metrics(to_device(S, device), ids["q_pids"], ids["g_pids"], ids["q_camids"],
                               ids["g_camids"], ids["q_clothes"], ids["g_clothes"], mode=mode,
                               per_probe=True)
    ref = rank_metrics_ref(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"],
                           ids["q_clothes"], ids["g_clothes"], mode=mode)
    _check(res, ref)


def test_without_cameras_every_same_pid_is_good(device):
    S, ids = make_problem(3, ties=False)
    res = metrics.rank_metrics(to_device(S, device), ids["q_pids"], ids["g_pids"], per_probe=True)
    ref = rank_metrics_ref(S, ids["q_pids"], ids["g_pids"])
    _check(res, ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_dtype_equals_float64_of_the_rounded_values(device, dtype):
    S, ids = make_problem(4, ties=False, dtype=np.float64)
    t = torch.from_numpy(S).to(dtype)
    rounded = t.to(torch.float64).numpy()
    res = metrics.rank_metrics(t.to(device), ids["q_pids"], ids["g_pids"], ids["q_camids"],
                               ids["g_camids"], per_probe=True)
    ref = rank_metrics_ref(rounded, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
    _check(res, ref)


def test_nan_scores_rank_last(device):
    S, ids = make_problem(5, nan_frac=0.2)
    res = metrics.rank_metrics(to_device(S, device), ids["q_pids"], ids["g_pids"], ids["q_camids"],
                               ids["g_camids"], per_probe=True)
    ref = rank_metrics_ref(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
    _check(res, ref)


def test_infinities_and_signed_zero(device):
    S = np.array([[0.0, -0.0, np.inf, -np.inf, np.nan, 0.0],
                  [-0.0, 0.0, -np.inf, np.inf, 1.0, np.nan]], dtype=np.float32)
    qp = np.array([1, 2])
    gp = np.array([1, 1, 2, 2, 1, 2])
    res = metrics.rank_metrics(to_device(S, device), qp, gp, per_probe=True)
    ref = rank_metrics_ref(S, qp, gp)
    _check(res, ref)


def test_skipped_and_all_junk_rows(device):
    # probe 0 has no same-pid entry; probe 1 only same-camera (all junk); probe 2 normal
    S = np.array([[0.9, 0.1, 0.5, 0.3],
                  [0.2, 0.8, 0.4, 0.6],
                  [0.1, 0.7, 0.2, 0.9]], dtype=np.float32)
    qp, gp = np.array([9, 1, 2]), np.array([1, 1, 2, 2])
    qc, gc = np.array([0, 0, 0]), np.array([0, 0, 1, 1])
    res = metrics.rank_metrics(to_device(S, device), qp, gp, qc, gc, per_probe=True)
    assert res.num_valid == 1 and res.num_skipped == 2
    # probe 2: goods = cols 2, 3 (scores .2, .9); no junk; order 3, 1, 2, 0
    np.testing.assert_array_equal(res.first_pos, [-1, -1, 0])
    assert res.ap[2] == pytest.approx((1 / 1 + 2 / 3) / 2)
    _check(res, rank_metrics_ref(S, qp, gp, qc, gc))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1)])
def test_degenerate_shapes(device, shape):
    rng = np.random.default_rng(1)
    S = rng.normal(size=shape).astype(np.float32)
    qp = rng.integers(0, 2, shape[0])
    gp = rng.integers(0, 2, shape[1])
    res = metrics.rank_metrics(to_device(S, device), qp, gp, per_probe=True)
    _check(res, rank_metrics_ref(S, qp, gp))


def test_non_contiguous_and_transposed(device):
    S, ids = make_problem(6, P=30, G=30)
    T = np.ascontiguousarray(S.T)
    view = torch.from_numpy(T).to(device).t()  # (P, G) view with strides (1, P)
    assert not view.is_contiguous()
    res = metrics.rank_metrics(view, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"],
                               per_probe=True)
    _check(res, rank_metrics_ref(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"]))
    big = torch.from_numpy(np.repeat(S, 2, axis=1)).to(device)[:, ::2]  # column stride 2
    res2 = metrics.rank_metrics(big, ids["q_pids"], ids["g_pids"], ids["q_camids"],
                                ids["g_camids"], per_probe=True)
    _check(res2, rank_metrics_ref(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"]))


def test_float_ids_and_torch_ids(device):
    S, ids = make_problem(7)
    ref = rank_metrics_ref(S, ids["q_pids"], ids["g_pids"])
    res = metrics.rank_metrics(to_device(S, device), ids["q_pids"].astype(np.float32),
                               torch.from_numpy(ids["g_pids"]).to(device), per_probe=True)
    _check(res, ref)


def test_results_do_not_depend_on_thread_count():
    import qme_ext
    S, ids = make_problem(8, P=64, G=500)
    before = qme_ext.get_num_threads()
    try:
        qme_ext.set_num_threads(1)
        a = metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"], per_probe=True)
        qme_ext.set_num_threads(3)
        b = metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"], per_probe=True)
    finally:
        qme_ext.set_num_threads(before)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.first_pos, b.first_pos)


def test_cmc_curve_is_rank_metrics_cmc():
    S, ids = make_problem(9)
    np.testing.assert_array_equal(metrics.cmc_curve(S, ids["q_pids"], ids["g_pids"], max_rank=7),
                                  metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"], max_rank=7).cmc)


def test_input_is_not_mutated():
    S, ids = make_problem(10, nan_frac=0.1)
    before = S.copy()
    metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"])
    metrics.tar_at_far(S, ids["q_pids"], ids["g_pids"])
    np.testing.assert_array_equal(S, before)
