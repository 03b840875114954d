"""CUDA twins equal the CPU kernels exactly; P*G > 2**31 handled. Skipped without a GPU."""
import numpy as np
import pytest
import torch

import qme_ext
from conftest import make_problem
from qme_ext.ops import evaluation as _ops
from qme_ext import metrics

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
        np.testing.assert_array_equal(a.rp, b.rp)  # issue 30: R-precision, MAP@R
        np.testing.assert_allclose(a.map_r, b.map_r, rtol=0, atol=1e-14)


def test_rank_counts_cuda_many_candidates():
    """Rows with thousands of same-pid entries (beyond any on-chip buffer)."""
    S, ids = make_problem(2, P=20, G=20000, n_ids=2, ties=True)
    a = metrics.rank_metrics(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"],
                             per_probe=True)
    b = metrics.rank_metrics(torch.from_numpy(S).cuda(), ids["q_pids"], ids["g_pids"],
                             ids["q_camids"], ids["g_camids"], per_probe=True)
    np.testing.assert_array_equal(a.first_pos, b.first_pos)
    np.testing.assert_allclose(a.ap, b.ap, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(a.rp, b.rp)
    np.testing.assert_allclose(a.map_r, b.map_r, rtol=0, atol=1e-13)


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
    M = torch.randn(500, 300, dtype=torch.float64).round(decimals=1)
    M[torch.rand(500, 300) < 0.01] = float("nan")
    M[torch.rand(500, 300) < 0.01] = float("inf")
    M[torch.rand(500, 300) < 0.01] = -float("inf")
    M = M.to(dtype)
    gcol = torch.randint(-1, 300, (500,))
    enrolled = torch.randint(0, 2, (10, 300), dtype=torch.uint8)
    a = _ops.openset_stats(M, gcol, enrolled)
    b = _ops.openset_stats(M.cuda(), gcol.cuda(), enrolled.cuda())
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    assert torch.equal(a[2], b[2].cpu()) and int(a[2][0]) > 0


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


# ---- quality, fusion and expert kernels: CUDA twins against the CPU (issue 10, items 1-6) ----
def _bitwise(a, b):
    """Equal bit for bit (NaN payloads aside; -0.0 and +0.0 differ)."""
    a, b = a.cpu(), b.cpu()
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.is_floating_point():
        same_nan = torch.isnan(a) & torch.isnan(b)
        a = torch.where(same_nan, torch.zeros_like(a), a)
        b = torch.where(same_nan, torch.zeros_like(b), b)
        ai = a.contiguous().view(torch.int64 if a.dtype == torch.float64 else
                                 torch.int32 if a.dtype == torch.float32 else torch.int16)
        bi = b.contiguous().view(ai.dtype)
        bad = (ai != bi).nonzero()
        assert bad.numel() == 0, f"{bad.shape[0]} entries differ, first at {bad[0].tolist()}"
    else:
        assert torch.equal(a, b)


@pytest.mark.parametrize("din", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("dout", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("strided", [False, True])
def test_qmagface_epilogue_cuda_bitwise_cpu(din, dout, strided):
    """One rule on both twins (item 1): float math for float32 -> float32 in every layout,
    double otherwise, NaN-propagating min of the qualities."""
    from qme_ext.ops import quality as oq
    g = torch.Generator().manual_seed(0)
    cos = (torch.rand(67, 1000, generator=g, dtype=torch.float64) * 2 - 1).to(din)
    if strided:
        cos = cos.t().contiguous().t()
    qp = torch.rand(67, generator=g, dtype=torch.float64) * 30
    qg = torch.rand(1000, generator=g, dtype=torch.float64) * 30
    qp[3], qg[7] = float("nan"), float("nan")
    for alpha, beta in ((0.077, 0.125), (5.0, 3.3)):
        out_c = torch.empty(67, 1000, dtype=dout)
        out_g = torch.empty(67, 1000, dtype=dout, device="cuda")
        if strided:
            out_c, out_g = out_c.t().contiguous().t(), out_g.t().contiguous().t()
        oq.qmagface_epilogue(cos, qp, qg, alpha, beta, out_c)
        oq.qmagface_epilogue(cos.cuda(), qp.cuda(), qg.cuda(), alpha, beta, out_g)
        _bitwise(out_g, out_c)
        assert torch.isnan(out_c[3]).all() and torch.isnan(out_c[:, 7]).all()


@pytest.mark.parametrize("fdtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [1, 300, 20000])  # 20000: beyond the staged (shared-memory) path
def test_template_aggregate_cuda_bitwise_cpu(fdtype, wdtype, D):
    """No FMA contraction, double accumulation, the CPU's summation order (item 2)."""
    from qme_ext.ops import quality as oq
    g = torch.Generator().manual_seed(1)
    sizes = [0, 1, 5, 37, 2, 0, 11] if D < 20000 else [3, 0, 4]
    N = sum(sizes)
    f = torch.randn(N, D, generator=g, dtype=torch.float64).to(fdtype)
    w = torch.rand(N, generator=g, dtype=torch.float64).to(wdtype)
    w[::4] = 0.0  # zero-weight rows are skipped, as on the CPU
    off = torch.tensor([0] + sizes).cumsum(0)
    for normalize in (False, True):
        a = oq.template_aggregate(f, w, off, normalize)
        b = oq.template_aggregate(f.cuda(), w.cuda(), off.cuda(), normalize)
        for u, v in zip(b, a):
            _bitwise(u, v)


def _expert_problem(Z, K, H, B, G, dtype, seed=0):
    from test_qme_ops import make_params
    p = make_params(Z=Z, K=K, H=H, B=B, dtype=torch.float64, seed=seed)
    p = {k: v.to(dtype) for k, v in p.items()}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, G, generator=g, dtype=torch.float64).to(dtype)
    gr = torch.randn(B, G, generator=g, dtype=torch.float64).to(dtype)
    return p, x, gr


def test_expert_fuse_forward_cuda_vs_cpu_decision():
    """Item 4 decision: the CUDA expert_fuse forward is NOT bit-equal to the CPU (CUDA's
    expm1/expm1f and its contracted FMAs against the CPU's inline polynomial and separate
    roundings); it agrees to float32 rounding: |diff| <= 4e-6 * (1 + |out|) for float32,
    1e-12 for float64."""
    from qme_ext.ops import qme as ops
    for dtype, tol in ((torch.float32, 4e-6), (torch.float64, 1e-12)):
        p, x, _ = _expert_problem(3, 4, 12, 5, 20000, dtype)
        pc = {k: v.cuda() for k, v in p.items()}
        for drop in (0.0, 0.3):
            a = ops.expert_fuse(x, *p.values(), drop, 5).double()
            b = ops.expert_fuse(x.cuda(), *pc.values(), drop, 5).cpu().double()
            assert ((a - b).abs() <= tol * (1 + a.abs())).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_fuse_bwd_cuda_sums_in_double(dtype):
    """Item 3: parameter gradients summed in double on CUDA as on the CPU, so at
    B*G ~ 1.6e7 float32 gradients of the two twins agree to ~1e-6 of their scale
    (float partial sums drift ~1e-5..1e-4)."""
    from qme_ext.ops import qme as ops
    p, x, gr = _expert_problem(2, 3, 9, 8, 2_000_000, dtype, seed=2)
    pc = {k: v.cuda() for k, v in p.items()}
    a = ops.expert_fuse_bwd(gr, x, *p.values(), 0.0, 3)
    b = ops.expert_fuse_bwd(gr.cuda(), x.cuda(), *pc.values(), 0.0, 3)
    ref = ops.expert_fuse_bwd(gr.double(), x.double(), *(v.double() for v in p.values()), 0.0, 3)
    for i, (u, v, r) in enumerate(zip(b, a, ref)):
        if i == 0:
            continue  # grad_x: per entry, no sum
        u, v, r = u.cpu().double(), v.double(), r.double()
        scale = r.abs().max().item() + 1e-30
        assert (u - v).abs().max().item() <= 2e-6 * scale, i
        assert (u - r).abs().max().item() <= 2e-5 * scale, i


def test_expert_fuse_bwd_cuda_large_experts_run():
    """Item 4: staged parameters + 8 per-warp copies beyond 227 KB of shared memory run in
    expert-range launches (the CPU runs these shapes) and match the CPU."""
    from qme_ext.ops import qme as ops
    p, x, gr = _expert_problem(8, 8, 64, 3, 5000, torch.float64, seed=3)
    pc = {k: v.cuda() for k, v in p.items()}
    for drop in (0.0, 0.25):
        a = ops.expert_fuse_bwd(gr, x, *p.values(), drop, 7)
        b = ops.expert_fuse_bwd(gr.cuda(), x.cuda(), *pc.values(), drop, 7)
        for u, v in zip(b, a):
            torch.testing.assert_close(u.cpu(), v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (37, 70001), (16 * 300 + 5, 129), (3, 40000)])
def test_score_stats_cuda_bitwise_cpu(dtype, shape):
    """Item 5: one decomposition (16 x 32768 parts, 256 lanes, fixed trees) on both twins:
    count/mean/M2/min/max bit for bit, labels or not, NaN/inf/+-0 in the data."""
    from qme_ext.ops import fusion as of
    P, G = shape
    g = torch.Generator().manual_seed(P + G)
    S = torch.randn(P, G, generator=g, dtype=torch.float64)
    S.view(-1)[::97] = -0.0
    S.view(-1)[::89] = 0.0
    S.view(-1)[5::1001] = float("nan")
    S.view(-1)[7::3001] = float("inf")
    S = S.to(dtype)
    qp = torch.randint(0, 20, (P,), generator=g)
    gp = torch.randint(0, 20, (G,), generator=g)
    empty = torch.zeros(0, dtype=torch.int64)
    for q, gg in ((qp, gp), (empty, empty)):
        a = of.score_stats(S, q, gg)
        b = of.score_stats(S.cuda(), q.cuda(), gg.cuda())
        _bitwise(b, a)
    st = of.score_stats(S.t().contiguous().t().cuda(), qp.cuda(), gp.cuda())  # any strides
    _bitwise(st, of.score_stats(S, qp, gp))


@pytest.mark.slow
def test_topk_cuda_more_than_2_32_columns():
    """Item 6: one row of 2^32 + 3 float16 scores, the winners past column 2^32."""
    free, _ = torch.cuda.mem_get_info()
    G = 2**32 + 3
    if free < 12 * 2**30:
        pytest.skip("needs ~12 GiB of free GPU memory")
    from qme_ext.ops import topk as ot
    S = torch.zeros((1, G), dtype=torch.float16, device="cuda")
    S[0, G - 1], S[0, 2**32], S[0, 5] = 3.0, 2.0, 2.0  # tie at 2.0: lower column first
    vals, idx = ot.topk(S, 4, True)
    assert idx[0].tolist() == [G - 1, 5, 2**32, 0]
    assert vals[0].tolist() == [3.0, 2.0, 2.0, 0.0]
