"""CUDA twins equal the CPU kernels exactly; P*G > 2**31 handled. Skipped without a GPU."""
import numpy as np
import pytest
import torch

import qme_ext
from conftest import make_problem
from qme_ext import _ops, metrics

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not qme_ext.cuda_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_rank_counts_cuda_equals_cpu(dtype, seed):
    S, ids = make_problem(seed, P=300, G=3000, n_ids=40, nan_frac=0.01, dtype=np.float64)
    t = torch.from_numpy(S).to(dtype)
    args = [ids[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids", "q_clothes", "g_clothes")]
    for mode in ("general", "sc", "cc"):
        a = metrics.rank_metrics(t, *args, mode=mode, per_probe=True)
        b = metrics.rank_metrics(t.cuda(), *args, mode=mode, per_probe=True)
        np.testing.assert_array_equal(a.first_pos, b.first_pos)
        np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-14)
        np.testing.assert_array_equal(a.cmc, b.cmc)


def test_rank_counts_cuda_many_candidates():
    """Rows with thousands of same-pid entries (beyond any on-chip buffer)."""
    S, ids = make_problem(2, P=20, G=20000, n_ids=2, ties=True)
    a = metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"],
                             per_probe=True)
    b = metrics.rank_metrics(torch.from_numpy(S).cuda(), ids["q_pids"], ids["g_pids"],
                             ids["q_camids"], ids["g_camids"], per_probe=True)
    np.testing.assert_array_equal(a.first_pos, b.first_pos)
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_key_histogram_cuda_equals_cpu(dtype):
    S = torch.randn(257, 1031, dtype=torch.float64).to(dtype)
    S[3, :10] = float("nan")
    bits = 64 if dtype == torch.float64 else 32
    empty = torch.zeros(0, dtype=torch.int64)
    for digit_bits in (8, 11, 16):
        a = _ops.key_histogram(S, bits - digit_bits, digit_bits, empty, bits, 0)
        b = _ops.key_histogram(S.cuda(), bits - digit_bits, digit_bits, empty.cuda(), bits, 0)
        assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    pre = torch.tensor([0xBF80, 0x3F80, 0x4000], dtype=torch.int64)
    if bits == 32:
        a = _ops.key_histogram(S, 0, 16, pre, 16, 12345)
        b = _ops.key_histogram(S.cuda(), 0, 16, pre.cuda(), 16, 12345)
        assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_openset_cuda_equals_cpu(dtype):
    M = torch.randn(500, 300, dtype=torch.float64).round(decimals=1).to(dtype)
    gcol = torch.randint(-1, 300, (500,))
    enrolled = torch.randint(0, 2, (10, 300), dtype=torch.uint8)
    a = _ops.openset_stats(M, gcol, enrolled)
    b = _ops.openset_stats(M.cuda(), gcol.cuda(), enrolled.cuda())
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())


def test_evaluate_cuda_equals_cpu():
    from test_evaluate import wholebody_like
    d = wholebody_like(0, P=400, n_sub=60, per_sub=20)
    a = metrics.evaluate(**d)
    b = metrics.evaluate(**d, device="cuda")
    for k in a:
        assert (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-13), k


@pytest.mark.slow
def test_more_than_2_31_scores_fp16():
    """3e9 float16 scores: positions known by construction, rows past 2**31 / G checked."""
    free, _ = torch.cuda.mem_get_info()
    P, G = 30000, 100000
    if free < 10 * 2**30:
        pytest.skip("needs ~10 GiB of free GPU memory")
    S = torch.rand((P, G), device="cuda", dtype=torch.float16) * 0.5  # impostors < 0.5
    rows = torch.arange(P, device="cuda")
    # probe p's only genuine entry is column G-1-(p % 7): pids 0..6 live in the last 7 columns
    q_pids = rows % 7
    g_pids = torch.full((G,), -1, dtype=torch.int64, device="cuda")
    g_pids[G - 7:] = torch.arange(6, -1, -1, device="cuda")
    S[rows, G - 1 - (rows % 7)] = 0.875
    k = rows % 5  # k_p impostors scored above the genuine entry
    for i in range(5):
        sel = rows[k > i]
        S[sel, G - 20 - i] = 0.9375
    res = metrics.rank_metrics(S, q_pids, g_pids, per_probe=True)
    expect = k.cpu().numpy()
    np.testing.assert_array_equal(res.first_pos, expect)
    np.testing.assert_allclose(res.ap, 1.0 / (expect + 1), rtol=0, atol=1e-15)
    tar = metrics.tar_at_far(S, q_pids, g_pids, fars=(1e-9,))
    assert tar.threshold[0] == 0.9375 and tar.tar[0] == 0.0
    assert tar.num_genuine == P and tar.num_impostor == P * G - P
