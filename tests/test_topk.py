"""qme_ext.topk (custom op qme_ext::topk) and qme_ext.qme.search against the sort-based
reference: order, ties, NaN / inf / -0.0, every dtype, strides, validation, opcheck,
torch.compile, thread-count independence, CUDA vs CPU."""
import copy

import numpy as np
import pytest
import torch

import qme_ext
from conftest import requires_cuda
from layouts import TORCH_DTYPES
from qme_ext.ops import topk as _ops_topk
from qme_ext.qme import QME, QualityEstimator, search
from qme_ext.reference import topk_ref

INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}


def scores(P, G, seed=0, ties=True, specials=True, dtype=torch.float32):
    """Quantised normal scores (many ties) with NaN, +-inf, -0.0 and +0.0 sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(P, G, generator=g, dtype=torch.float64)
    if ties:
        s = torch.round(s * 4) / 4
    if specials:
        u = torch.rand(P, G, generator=g)
        s[u < 0.04] = float("nan")
        s[(u >= 0.04) & (u < 0.06)] = float("inf")
        s[(u >= 0.06) & (u < 0.08)] = -float("inf")
        s[(u >= 0.08) & (u < 0.11)] = -0.0
        s[(u >= 0.11) & (u < 0.14)] = 0.0
    return s.to(dtype)


def assert_same(got, ref):
    """Indices equal, values equal bit for bit (NaN payloads and -0.0 included)."""
    (v, i), (rv, ri) = got, ref
    if isinstance(v, np.ndarray):
        assert isinstance(i, np.ndarray) and i.dtype == np.int64
        np.testing.assert_array_equal(i, ri)
        assert v.dtype == rv.dtype and v.tobytes() == rv.tobytes()
        return
    # values and indices come back on one device (the input's; a CUDA result is compared
    # with the CPU's, so not necessarily ref's)
    assert i.dtype == torch.int64 and v.dtype == rv.dtype and v.device == i.device
    assert torch.equal(i.cpu(), ri.cpu())
    assert torch.equal(v.cpu().view(INT_VIEW[v.dtype]), rv.cpu().view(INT_VIEW[rv.dtype]))


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("P,G,k", [(13, 257, 1), (13, 257, 10), (13, 257, 257), (1, 5000, 2048),
                                   (40, 1, 1), (1, 1, 1), (3, 3000, 700)])
def test_matches_reference(device, dtype, largest, P, G, k):
    S = scores(P, G, seed=P * G + k, dtype=dtype).to(device)
    assert_same(qme_ext.topk(S, k, largest), topk_ref(S, k, largest))


def test_order_nan_inf_and_signed_zero():
    S = np.array([[1.0, np.nan, 3.0, -0.0, 0.0, np.nan, -np.inf, np.inf]], dtype=np.float32)
    v, i = qme_ext.topk(S, 8)
    assert i.tolist() == [[7, 2, 0, 3, 4, 6, 1, 5]]  # NaN last, -0.0 ties +0.0 by index
    assert np.signbit(v[0, 3]) and not np.signbit(v[0, 4])
    _, i = qme_ext.topk(S, 8, largest=False)
    assert i.tolist() == [[6, 3, 4, 0, 2, 7, 1, 5]]  # NaN last in both directions
    v, i = qme_ext.topk(np.full((2, 5), np.nan, dtype=np.float32), 3)
    assert i.tolist() == [[0, 1, 2]] * 2 and np.isnan(v).all()


def test_reference_agrees_with_torch_topk_on_distinct_scores():
    S = torch.randn(20, 300, generator=torch.Generator().manual_seed(3))
    for largest in (True, False):
        v, i = topk_ref(S, 17, largest)
        tv, ti = torch.topk(S, 17, largest=largest, sorted=True)
        assert torch.equal(v, tv) and torch.equal(i, ti)


@pytest.mark.parametrize("largest", [True, False])
def test_adversarial_orders(device, largest):
    # Ascending rows make every element beat the running bar (many buffer cuts);
    # constant rows are one big tie broken by column.
    up = torch.arange(20_000, dtype=torch.float32).repeat(3, 1)
    rows = torch.cat([up, up.flip(1), torch.full((2, 20_000), 0.5)]).to(device)
    for k in (1, 64, 2048):
        assert_same(qme_ext.topk(rows, k, largest), topk_ref(rows, k, largest))


def test_numpy_in_numpy_out():
    for dt in (np.float16, np.float32, np.float64):
        S = scores(6, 50, seed=1).numpy().astype(dt)
        got = qme_ext.topk(S, 5)
        assert isinstance(got, qme_ext.top_k.TopK) and got.values.dtype == dt
        assert_same(got, topk_ref(S, 5))


def test_strided_inputs_are_read_in_place(device):
    base = scores(300, 40, seed=2).to(device)
    for S in (base.T, base[::2, 1::3], base.T[:, ::7]):
        assert not S.is_contiguous()
        assert_same(qme_ext.topk(S, 4), topk_ref(S, 4))
    A = scores(30, 200, seed=4).numpy()
    for S in (A.T, A[:, ::-1], A[::3, ::2]):
        assert_same(qme_ext.topk(S, 9), topk_ref(S, 9))


@pytest.mark.parametrize("P,G", [(1, 300_001), (3, 100_003), (7, 40_000), (600, 900)])
def test_independent_of_thread_count(P, G):
    # Rows cut between threads are merged from per-segment top-k lists.
    S = scores(P, G, seed=G, specials=(G % 2 == 1))
    ref = topk_ref(S, 50)
    old = qme_ext.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            qme_ext.set_num_threads(n)
            assert_same(qme_ext.topk(S, 50), ref)
    finally:
        qme_ext.set_num_threads(old)


def test_validation_errors():
    S = np.zeros((4, 10), dtype=np.float32)
    for k in (0, -1, 11, 2049):
        with pytest.raises(ValueError, match="k"):
            qme_ext.topk(S, k)
    with pytest.raises(ValueError, match=r"k <= G = 10"):
        qme_ext.topk(S, 11)
    for k in (1.0, True, "3", None):
        with pytest.raises(TypeError, match="k"):
            qme_ext.topk(S, k)
    with pytest.raises(ValueError, match="scores"):
        qme_ext.topk(np.zeros(10, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="scores"):
        qme_ext.topk(torch.zeros(2, 3, 4), 1)
    for bad in (np.zeros((3, 3), dtype=np.int64), torch.zeros(3, 3, dtype=torch.int32),
                torch.zeros(3, 3, dtype=torch.complex64), [[1.0, 2.0]]):
        with pytest.raises(TypeError, match="scores"):
            qme_ext.topk(bad, 1)
    with pytest.raises(TypeError, match="largest"):
        qme_ext.topk(S, 1, largest="yes")
    with pytest.raises(ValueError, match="k"):
        torch.ops.qme_ext.topk(torch.zeros(2, 3), 4, True)


def test_not_differentiable_values_are_detached():
    S = torch.randn(3, 20, requires_grad=True)
    v, i = qme_ext.topk(S, 4)
    assert not v.requires_grad
    S.gather(1, i).sum().backward()  # the documented way to differentiate
    assert S.grad.sum() == 12


def test_opcheck(device):
    S = scores(9, 70, seed=5).to(device)
    for args in ((S, 5, True), (S.T.contiguous().T, 70, False), (S.half(), 1, True)):
        torch.library.opcheck(_ops_topk.topk, args,
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


def test_torch_compile():
    def f(x):
        v, i = qme_ext.topk(x * 2.0, 5)
        return v.sum() + i.sum()

    S = torch.randn(8, 64)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(S), f(S))


# ---- QME search ---------------------------------------------------------------
@pytest.fixture(scope="module")
def qme_problem():
    torch.manual_seed(0)
    model = QME(["face", "body", "gait"], num_experts=2).eval()
    rng = np.random.default_rng(0)
    x = (np.round(rng.normal(size=(9, 3, 1100)) * 2) / 2).astype(np.float32)  # ties in the fusion
    q = rng.random(9).astype(np.float32)
    with torch.no_grad():
        fused = model(torch.from_numpy(x), torch.from_numpy(q))
    return model, x, q, fused


@pytest.mark.parametrize("k", [1, 10, 300])
@pytest.mark.parametrize("largest", [True, False])
def test_search_equals_topk_of_full_fusion(qme_problem, k, largest):
    model, x, q, fused = qme_problem
    ref = qme_ext.topk(fused, k, largest)
    ref_np = (ref.values.numpy(), ref.indices.numpy())
    assert_same(search(model, x, k, q, tile=128, largest=largest), ref_np)
    mats = {m: x[:, j] for j, m in enumerate(model.models)}
    assert_same(search(model, mats, k, q, tile=333, batch=4, largest=largest), ref_np)
    tiles = ({m: torch.from_numpy(x[:, j, c:c + 150]) for j, m in enumerate(model.models)}
             for c in range(0, x.shape[2], 150))
    assert_same(search(model, tiles, k, torch.from_numpy(q), largest=largest), ref)


def test_search_quality_estimator_and_single_expert(qme_problem):
    model, x, _, _ = qme_problem
    feats = np.random.default_rng(1).normal(size=(9, 6)).astype(np.float32)
    feats[2] = 0.0  # no face: q = 0
    qe = QualityEstimator(6).eval()
    q = qe(torch.from_numpy(feats)).detach()
    q[2] = 0.0
    with torch.no_grad():
        ref = qme_ext.topk(model(torch.from_numpy(x), q), 7)
    got = search(model, torch.from_numpy(x), 7, qe, features=feats, tile=200)
    assert_same(got, ref)
    torch.manual_seed(2)
    one = QME(["face", "body", "gait"], num_experts=1).train()
    with torch.no_grad():
        ref = qme_ext.topk(one.eval()(torch.from_numpy(x)), 3)
    one.train()
    assert_same(search(one, torch.from_numpy(x), 3, tile=100), ref)
    assert one.training  # mode restored


def test_search_scoreset_equals_predict(qme_problem):
    from qme_ext.io import ScoreSet
    from qme_ext.qme import predict

    model, x, _, _ = qme_problem
    P, _, G = x.shape
    ids = np.zeros(P, dtype=np.int64)
    feats = np.random.default_rng(3).normal(size=(P, 6)).astype(np.float32)
    ss = ScoreSet(models=list(model.models), score_mats={m: x[:, j] for j, m in
                                                         enumerate(model.models)},
                  merge_score_mats={}, q_pids=ids, q_camids=ids, q_clothes_ids=ids,
                  g_pids=np.zeros(G, dtype=np.int64), g_camids=np.zeros(G, dtype=np.int64),
                  g_clothes_ids=np.zeros(G, dtype=np.int64), unique_g_pids=ids[:1],
                  quality={"face": feats})
    qe = QualityEstimator(6).eval()
    fused, _ = predict(model, qe, ss)
    assert_same(search(model, ss, 25, qe, tile=257), qme_ext.topk(fused, 25))


def test_search_validation(qme_problem):
    model, x, q, _ = qme_problem
    with pytest.raises(ValueError, match="k <= G"):
        search(model, x[:, :, :5], 6, q)
    with pytest.raises(ValueError, match="k <= G"):
        search(model, iter([x[:, :, :3], x[:, :, 3:5]]), 6, q)
    with pytest.raises(ValueError, match="missing model"):
        search(model, {"face": x[:, 0]}, 1, q)
    with pytest.raises(ValueError, match="quality"):
        search(model, x, 1, q[:4])
    with pytest.raises(ValueError, match="features"):
        search(model, x, 1, QualityEstimator(6))
    with pytest.raises(ValueError, match="probes"):
        search(model, iter([x[:, :, :5], x[:4, :, 5:]]), 1, q)


# ---- CUDA ---------------------------------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_cuda_matches_cpu(dtype):
    cases = [(1, 2_000_003, (1, 100, 2048)), (300, 20_000, (1, 37, 2048)), (4000, 5000, (2048,)),
             (5, 70_000, (64,))]
    for P, G, ks in cases:
        S = scores(P, G, seed=P + G, specials=P != 4000, dtype=dtype)
        if P == 5:
            S[1] = 1.0   # one value: every tie broken by column
            S[2, ::2] = float("nan")
        Sc = S.cuda()
        for k in ks:
            for largest in (True, False):
                got = qme_ext.topk(Sc, k, largest)
                assert got[0].is_cuda and got[1].is_cuda
                assert_same(got, qme_ext.topk(S, k, largest))
    Sc = scores(64, 3000, seed=9).cuda()
    assert_same(qme_ext.topk(Sc.T, 11), qme_ext.topk(Sc.T.cpu(), 11))


@requires_cuda
def test_cuda_search_equals_topk_of_cuda_fusion(qme_problem):
    model, x, q, _ = qme_problem
    model = copy.deepcopy(model).cuda()
    xc, qc = torch.from_numpy(x).cuda(), torch.from_numpy(q).cuda()
    with torch.no_grad():
        ref = qme_ext.topk(model(xc, qc), 10)
    assert_same(search(model, xc, 10, qc, tile=256), ref)
