"""Quality-aware recognition (docs/definitions.rst, §5): formulas against direct PyTorch
transcriptions, the check values of docs/definitions.rst, the MagFace fixture oracle, gradchecks,
opchecks of qme_ext::qmagface_epilogue / template_aggregate, and the QMagFace
fit against the literal reference in both threshold spaces."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qme_ext.ops import quality as oq
from qme_ext.quality import (AdaFaceHead, EQFaceLoss, EQFaceQualityHead, MagFaceHead,
                             ProgressiveAggregator, QAFaceInjection, QMagFace, aggregate_templates,
                             eqface_step_params, fit_line, pair_cosine_quality, magface_margin,
                             magface_regularizer, qmagface_template, qwfa, qwfaf)
from qme_ext.quality.qmagface import qmagface_thresholds_omegas
from qme_ext.reference.quality import (qmagface_fit_reference, qmagface_score_matrix_ref,
                                       qmagface_score_ref, template_aggregate_ref)


# ---- fixture -------------------------------------------------------------------
# Real MagFace iResNet100 embeddings of the MagFace project's 10 toy images (Apache-2.0,
# see tests/fixtures/magface-toy/LICENSE), kept in the repository so CI always runs this.
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "magface-toy" / "feat.list"


@pytest.fixture(scope="module")
def magface_toy():
    rows = [ln.split() for ln in FIXTURE.read_text().splitlines() if ln.strip()]
    return torch.tensor([[float(v) for v in r[1:]] for r in rows], dtype=torch.float64)


def test_fixture_norms_and_oracle_scores(magface_toy):
    X = magface_toy
    norms = [21.7785, 22.1643, 24.0901, 24.4008, 25.903, 27.1119, 27.4125, 28.224, 28.7345,
             30.2471]
    assert torch.allclose(X.norm(dim=1), torch.tensor(norms, dtype=torch.float64), atol=1e-4)
    qm = QMagFace("magface-r100")
    sc = qm.score_pairs(X[[0, 1, 0]], X[[1, 5, 2]])
    # published oracle values (6 decimals): |diff| <= 5e-7 rounding + 1e-6
    assert np.allclose(sc.numpy(), [-0.085591, -0.636897, 0.630399], atol=1e-6)
    s = F.cosine_similarity(X[[0, 1, 0]], X[[1, 5, 2]])
    assert np.allclose(s.numpy(), [0.427704, 0.284681, 0.630399], atol=1e-6)
    M = qm.score_matrix(X, X, block=(3, 4))  # float64 path through the tile epilogue
    assert abs(float(M[0, 1]) + 0.085591) < 1e-6 and abs(float(M[1, 5]) + 0.636897) < 1e-6
    assert abs(float(M[0, 2]) - 0.630399) < 1e-6
    M32 = qm.score_matrix(X.float(), X.float(), block=(4, 3))
    assert abs(float(M32[1, 5]) + 0.636897) < 1e-6


# ---- QMagFace scoring ------------------------------------------------------------
def test_published_parameters():
    assert (QMagFace("magface-r50").alpha, QMagFace("magface-r50").beta) == (0.065984, 0.103799)
    assert (QMagFace("MagFace-R18").alpha, QMagFace("magface-r18").beta) == (0.092861, 0.135311)
    with pytest.raises(ValueError):
        QMagFace("magface-r34")
    with pytest.raises(RuntimeError):
        QMagFace().score_pairs(torch.ones(1, 2), torch.ones(1, 2))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6),
                                       (torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_score_matrix_matches_direct(device, dtype, tol):
    g = torch.Generator().manual_seed(0)
    P, G = torch.randn(37, 24, generator=g) * 8, torch.randn(53, 24, generator=g) * 8
    qm = QMagFace(0.077428, 0.125926)
    # the pairwise formula on every (probe, gallery) pair; the matrix form must agree
    ref = qmagface_score_ref(P.double()[:, None, :].expand(-1, 53, -1).reshape(-1, 24),
                             G.double()[None].expand(37, -1, -1).reshape(-1, 24), qm.alpha,
                             qm.beta).reshape(37, 53)
    assert torch.allclose(qmagface_score_matrix_ref(P.double(), G.double(), qm.alpha, qm.beta),
                          ref, atol=1e-12)
    out = qm.score_matrix(P.to(dtype).to(device), G.to(dtype).to(device), block=(16, 20))
    assert out.shape == (37, 53) and out.dtype == (torch.float64 if dtype == torch.float64
                                                   else torch.float32)
    # low-precision inputs: the matmul error scales by (1 + beta q), q ~ 40 here
    assert torch.allclose(out.double().cpu(), ref, atol=tol * 6 if dtype in (
        torch.float16, torch.bfloat16) else tol)
    pairs = qm.score_pairs(P, G[:37])
    assert torch.allclose(pairs, torch.diagonal(ref[:, :37]), atol=1e-12)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16,
                                       torch.float64])
def test_epilogue_strided_output_and_dtypes(device, out_dtype):
    cos = (torch.rand(9, 11, dtype=torch.float64) * 2 - 1).to(device)
    qp = (torch.rand(9, dtype=torch.float64) * 30).to(device)
    qg = (torch.rand(11, dtype=torch.float64) * 30).to(device)
    big = torch.zeros(20, 30, dtype=out_dtype, device=device)
    view = big[3:12, 5:16]
    oq.qmagface_epilogue(cos.T.contiguous().T, qp, qg, 0.07, 0.12, view)
    ref = cos + torch.clamp(0.12 * cos - 0.07, max=0) * torch.minimum(qp[:, None], qg[None])
    # outputs are the correctly rounded encodings of the (fp32 / fp64) result
    assert torch.equal(view.cpu(), ref.float().to(out_dtype).cpu()) or \
        torch.allclose(view.double().cpu(), ref.cpu(), atol=1e-6 if out_dtype != torch.float16 and
                       out_dtype != torch.bfloat16 else 0.05)
    assert big[:3].abs().sum() == 0 and big[:, :5].abs().sum() == 0


@pytest.mark.parametrize("din", [torch.float32, torch.float64, torch.float16])
def test_epilogue_one_rule_in_every_layout_nan_quality(device, din):
    """One rule (issue 10, item 1): float32 -> float32 is float math in every layout (a
    strided tile gives the contiguous tile's bits), and a NaN quality gives NaN, like
    torch.minimum in the reference, on every path."""
    g = torch.Generator().manual_seed(4)
    cos = (torch.rand(13, 300, generator=g, dtype=torch.float64) * 2 - 1).to(din).to(device)
    qp = (torch.rand(13, generator=g, dtype=torch.float64) * 30).to(device)
    qg = (torch.rand(300, generator=g, dtype=torch.float64) * 30).to(device)
    qp[2], qg[9] = float("nan"), float("nan")
    dout = torch.float32 if din != torch.float64 else torch.float64
    flat = torch.empty(13, 300, dtype=dout, device=device)
    oq.qmagface_epilogue(cos, qp, qg, 0.07, 0.12, flat)
    strided = torch.empty(300, 13, dtype=dout, device=device).T
    oq.qmagface_epilogue(cos.T.contiguous().T, qp, qg, 0.07, 0.12, strided)
    assert torch.equal(torch.nan_to_num(flat, nan=7.0), torch.nan_to_num(strided, nan=7.0))
    nan = torch.isnan(flat)
    expect = torch.zeros_like(nan)
    expect[2] = True
    expect[:, 9] = True
    assert torch.equal(nan, expect)


def test_opcheck_qmagface_epilogue(device):
    cos = torch.rand(6, 7, device=device) * 2 - 1
    args = (cos, torch.rand(6, dtype=torch.float64, device=device) * 30,
            torch.rand(7, dtype=torch.float64, device=device) * 30, 0.08, 0.13,
            torch.empty(6, 7, device=device))
    torch.library.opcheck(oq.qmagface_epilogue, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


# ---- template_aggregate op ---------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("fdtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_template_aggregate_matches_direct(device, normalize, fdtype):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(40, 300, generator=g).to(fdtype)
    w = torch.rand(40, generator=g)
    w[5] = 0
    offsets = torch.tensor([0, 4, 4, 6, 7, 40])
    w[6] = 0  # segment 3 = rows 6..6: all-zero weight -> zero template
    wd = torch.float64 if fdtype == torch.float64 else torch.float32
    t, ws, n = oq.template_aggregate(f.to(device), w.to(wd).to(device), offsets.to(device),
                                     normalize)
    ref = template_aggregate_ref(f.double(), w.double(), offsets, normalize)
    tol = 1e-12 if wd == torch.float64 else 1e-5
    assert torch.allclose(t.double().cpu(), ref, atol=tol)
    assert float(ws[1]) == 0 and float(ws[3]) == 0 and t[1].abs().sum() == 0
    # strided (transposed-storage) features read in place
    t2, _, _ = oq.template_aggregate(f.T.contiguous().T.to(device), w.to(wd).to(device),
                                     offsets.to(device), normalize)
    assert torch.allclose(t2, t)


def test_template_aggregate_rejects_bad_offsets():
    f, w = torch.randn(5, 3), torch.rand(5)
    for off in ([0, 3, 2, 5], [1, 5], [0, 4]):
        with pytest.raises(ValueError):
            oq.template_aggregate(f, w, torch.tensor(off), False)


@pytest.mark.parametrize("normalize", [False, True])
def test_template_aggregate_gradcheck(device, normalize):
    g = torch.Generator().manual_seed(2)
    f = torch.randn(9, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = (torch.rand(9, generator=g, dtype=torch.float64) + 0.1).to(device).requires_grad_()
    off = torch.tensor([0, 2, 2, 6, 9], device=device)
    assert torch.autograd.gradcheck(
        lambda f, w: oq.template_aggregate(f, w, off, normalize), (f, w))
    assert torch.autograd.gradcheck(lambda f, w: aggregate_templates(f, w, off, normalize), (f, w))


def test_opcheck_template_aggregate(device):
    f = torch.randn(9, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.rand(9, dtype=torch.float64, device=device, requires_grad=True)
    off = torch.tensor([0, 2, 2, 6, 9], device=device)
    for normalize in (False, True):
        torch.library.opcheck(oq.template_aggregate, (f, w, off, normalize))
    torch.library.opcheck(oq.template_aggregate, (f.detach().float(), w.detach().float(), off,
                                                  True))


# ---- QMagFace fit ----------------------------------------------------------------
def _population(seed=0, n_id=150, per=5, D=16, noise=2.5):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_id, D))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    ids = np.repeat(np.arange(n_id), per)
    q = rng.uniform(15, 35, size=ids.size)
    f = c[ids] + rng.normal(size=(ids.size, D)) * (3.0 / q)[:, None] * noise
    f = f / np.linalg.norm(f, axis=1, keepdims=True) * q[:, None]
    i, j = np.triu_indices(ids.size, 1)
    pairs = np.stack([i, j], 1)
    return f, pairs, ids[i] == ids[j]


@pytest.mark.parametrize("space", ["sigmoid", "raw"])
def test_fit_matches_literal_reference(space):
    f, pairs, y = _population()
    ts, om = qmagface_thresholds_omegas(f, pairs, y, space)
    a, b, rts, rom = qmagface_fit_reference(f, pairs, y, space)
    assert np.array_equal(om, rom)
    assert np.allclose(ts, rts, rtol=0, atol=1e-12)
    m = QMagFace().fit(f, pairs, y, threshold_space=space)
    assert m.alpha == pytest.approx(a, abs=1e-9) and m.beta == pytest.approx(b, abs=1e-9)


def test_fit_with_tied_scores_matches_reference():
    # quantised features give exactly tied cosines: ROC points then merge several pairs
    f, pairs, y = _population(seed=3, n_id=60, noise=3.0)
    f = np.round(f)
    for space in ("sigmoid", "raw"):
        ts, om = qmagface_thresholds_omegas(f, pairs, y, space, fmrs=np.logspace(-3, -1, 12))
        _, _, rts, rom = qmagface_fit_reference(f, pairs, y, space, fmrs=np.logspace(-3, -1, 12))
        assert np.array_equal(om, rom) and np.allclose(ts, rts, atol=1e-12)


def test_fit_recovers_linear_omega():
    # The last stage of the fit on (t, omega_opt) pairs whose optimum is linear,
    # omega = beta t - alpha, but quantised to the omega grid (spacing d), which
    # is what the argmin over candidates produces. Quantisation error e_k <= d/2,
    # so the least squares slope is off by at most d/2 * sum|t - tbar| / sum (t - tbar)^2
    # and the intercept by d/2 + |d slope| * tbar: the tolerances used.
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.55, 0.75, 50))
    beta_true, alpha_true = 0.3, 0.2
    grid = np.linspace(-0.05, 0.05, 20)
    w = grid[np.argmin(np.abs((beta_true * t - alpha_true)[:, None] - grid[None]), axis=1)]
    m, b = fit_line(t, w)
    d = grid[1] - grid[0]
    dm = d / 2 * np.abs(t - t.mean()).sum() / ((t - t.mean()) ** 2).sum()
    assert abs(m - beta_true) <= dm
    assert abs(-b - alpha_true) <= d / 2 + dm * t.mean()
    # finer grid -> tighter recovery (the bound shrinks with d)
    grid = np.linspace(-0.05, 0.05, 2001)
    w = grid[np.argmin(np.abs((beta_true * t - alpha_true)[:, None] - grid[None]), axis=1)]
    m, b = fit_line(t, w)
    assert abs(m - beta_true) < 1e-3 and abs(-b - alpha_true) < 1e-3


def _linear_omega_population(seed, alpha, beta, n_gen=10000, n_imp=40000):
    """Pairs whose best quality weight is linear in the threshold: omega_opt(t) = beta t - alpha.

    Clean scores u (genuine N(0.5, 0.12), impostor N(0, 0.12)) are observed as cosines
    s = u - (beta u - alpha) q, with q = min pair norm ~ U(0.5, 1.5). A pair near the
    operating threshold t has u ~ t, so the constant omega = beta t - alpha gives back
    s + omega q ~ u there (exact to first order): the best omega per threshold is the line.
    beta * max(q) < 1 keeps u -> s increasing (otherwise the distortion is not invertible);
    alpha / beta above the thresholds used keeps omega < 0 there, where QMagFace's
    min(0, .) clamp is inactive.
    """
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_gen, bool), np.zeros(n_imp, bool)]
    u = np.where(y, rng.normal(0.5, 0.12, y.size), rng.normal(0.0, 0.12, y.size))
    q = rng.uniform(0.5, 1.5, y.size)
    s = np.clip(u - (beta * u - alpha) * q, -0.999, 0.999)
    n = y.size
    theta = np.arccos(s)
    q2 = q * rng.uniform(1.0, 1.5, n)  # the second sample is never the lower-quality one
    feats = np.concatenate([np.stack([q, np.zeros(n)], 1),
                            np.stack([q2 * np.cos(theta), q2 * np.sin(theta)], 1)])
    pairs = np.stack([np.arange(n), n + np.arange(n)], 1)
    return feats, pairs, y


@pytest.mark.parametrize("alpha,beta", [(0.25, 0.4), (0.3, 0.6)])
def test_fit_recovers_alpha_beta_of_a_population(alpha, beta):
    f, pairs, y = _linear_omega_population(0, alpha, beta)
    fmrs = np.logspace(-2.5, -1, 12)
    m = QMagFace().fit(f, pairs, y, threshold_space="raw", fmrs=fmrs, n_omega=61)
    # tolerance: omega grid step (0.011) plus the first-order model error, ~10% of beta
    assert m.alpha == pytest.approx(alpha, abs=0.03)
    assert m.beta == pytest.approx(beta, abs=0.06)
    # and the fitted quality-aware score separates better than the raw cosine at 1% FMR
    f1, f2 = torch.as_tensor(f[pairs[:, 0]]), torch.as_tensor(f[pairs[:, 1]])
    cosine, _ = pair_cosine_quality(f1, f2)

    def tar_at_1pct(x):
        x = np.asarray(x)
        t = np.sort(x[~y])[::-1][int(0.01 * (~y).sum()) - 1]
        return (x[y] > t).mean()

    assert tar_at_1pct(m.score_pairs(f1, f2)) > tar_at_1pct(cosine) + 0.02


# ---- margin heads ------------------------------------------------------------------
def test_magface_check_values():
    a = torch.tensor([25.0, 60.0], dtype=torch.float64)
    assert np.allclose(magface_margin(a).numpy(), [0.5025, 0.625], atol=1e-12)
    assert np.allclose(magface_regularizer(a).numpy(), [0.04207, 0.02163], atol=1e-5)


@pytest.mark.parametrize("variant", ["arcface", "cosface"])
@pytest.mark.parametrize("easy", [False, True])
def test_magface_head_matches_direct(variant, easy):
    torch.manual_seed(0)
    head = MagFaceHead(8, 5, variant=variant, easy_margin=easy).double()
    x = torch.randn(6, 8, dtype=torch.float64) * 20
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    logits, aux = head(x, y)
    a = x.norm(dim=1).clamp(10, 110)
    m = 0.35 / 100 * (a - 10) + 0.45
    cos = (x / x.norm(dim=1, keepdim=True)) @ (head.weight / head.weight.norm(dim=1,
                                                                               keepdim=True)).T
    th = torch.acos(cos[torch.arange(6), y])
    if variant == "cosface":
        tgt = cos[torch.arange(6), y] - m
    else:
        tgt = torch.cos(th + m)
        ct = cos[torch.arange(6), y]
        tgt = torch.where(ct > 0, tgt, ct) if easy else torch.where(th + m < math.pi, tgt,
                                                                      ct - torch.sin(math.pi - m) * m)
    ref = cos.clone()
    ref[torch.arange(6), y] = tgt
    assert torch.allclose(logits, 64 * ref, atol=1e-9)
    assert torch.allclose(aux, 35 * (1 / a + a / 110 ** 2).mean())


def test_adaface_check_values():
    head = AdaFaceHead(4, 3).double()
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[:, 0] = torch.tensor([10.0, 20.0, 30.0])
    z = head.margin_scaler(x)
    assert float(head.batch_mean) == pytest.approx(20.0) and \
        float(head.batch_std) == pytest.approx(99.1)
    assert np.allclose((0.4 + 0.4 * z).numpy(), [0.386559, 0.4, 0.413441], atol=1e-6)
    tl = head.target_logit(torch.full((3,), 0.5, dtype=torch.float64), z)
    assert np.allclose(tl.numpy(), [6.5124, 6.4, 6.2818], atol=1e-4)


def test_adaface_matches_direct_and_eval_freezes_buffers():
    torch.manual_seed(1)
    head = AdaFaceHead(6, 4).double()
    x = torch.randn(5, 6, dtype=torch.float64) * 15
    y = torch.tensor([0, 1, 2, 3, 1])
    logits, aux = head(x, y)
    n = x.norm(dim=1).clamp(0.001, 100)
    mu = 0.01 * n.mean() + 0.99 * 20
    sd = 0.01 * n.std() + 0.99 * 100
    z = ((n - mu) / (sd + 1e-3) * 0.333).clamp(-1, 1)
    cos = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    th = torch.acos(cos[torch.arange(5), y]) - 0.4 * z
    ref = 64 * cos.clone()
    ref[torch.arange(5), y] = 64 * (torch.cos(th) - (0.4 + 0.4 * z))
    assert torch.allclose(logits, ref, atol=1e-9) and float(aux) == 0
    head.eval()
    before = head.batch_mean.clone()
    head(x, y)
    assert torch.equal(before, head.batch_mean)


def test_heads_gradcheck():
    torch.manual_seed(2)
    y = torch.tensor([0, 1, 2, 1])
    for head in (MagFaceHead(5, 3).double(), MagFaceHead(5, 3, variant="cosface").double(),
                 MagFaceHead(5, 3, easy_margin=True).double(), AdaFaceHead(5, 3).double().eval()):
        x = (torch.randn(4, 5, dtype=torch.float64) * 20).requires_grad_()
        W = head.weight.detach().clone().requires_grad_()

        def fn(x, W, head=head):
            logits, aux = torch.func.functional_call(head, {"weight": W}, (x, y))
            return F.cross_entropy(logits, y) + aux
        if isinstance(head, AdaFaceHead):
            # AdaFace detaches the norm in its margin scaler by design (no gradient
            # through z); finite differences would see it, so hold z fixed for x.
            z = head.margin_scaler(x.detach())
            head.margin_scaler = lambda feats, z=z: z
        assert torch.autograd.gradcheck(fn, (x, W))


# ---- EQFace ------------------------------------------------------------------------
def test_eqface_loss_matches_direct_and_gradcheck():
    torch.manual_seed(3)
    cos = (torch.rand(6, 4, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    s = torch.rand(6, dtype=torch.float64).requires_grad_()
    loss = EQFaceLoss()(cos, y, s)
    ref = []
    for i in range(6):
        tgt = s[i] * 64 * (torch.cos(torch.acos(cos[i, y[i]]) + 0.3) - 0.2)
        others = torch.cat([s[i] * 64 * cos[i, :y[i]], s[i] * 64 * cos[i, y[i] + 1:]])
        ref.append(-(tgt - torch.logsumexp(torch.cat([tgt[None], others]), 0)))
    assert torch.allclose(loss, torch.stack(ref).mean())
    assert torch.autograd.gradcheck(lambda c, s: EQFaceLoss(S=8)(c, y, s), (cos, s))


def test_quality_head_and_pipeline():
    torch.manual_seed(4)
    qh = EQFaceQualityHead(8, hidden=16).double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    s = qh(x)
    assert s.shape == (5,) and bool(((s > 0) & (s < 1)).all())
    qh.eval()
    assert torch.autograd.gradcheck(lambda x: qh(x), (x,))
    bb, head = torch.nn.Linear(4, 8), MagFaceHead(8, 3)
    p1 = eqface_step_params(1, bb, head, qh)
    assert {id(p) for p in p1} == {id(p) for p in list(bb.parameters()) + [head.weight]}
    assert not any(p.requires_grad for p in qh.parameters())
    p2 = eqface_step_params(2, bb, head, qh)
    assert {id(p) for p in p2} == {id(p) for p in qh.parameters()}
    assert not any(p.requires_grad for p in bb.parameters()) and not head.weight.requires_grad
    eqface_step_params(3, bb, head, qh)
    assert all(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError):
        eqface_step_params(4, bb, head, qh)


def test_qwfa_qwfaf_and_progressive():
    torch.manual_seed(5)
    f = torch.randn(7, 6, dtype=torch.float64)
    s = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.35, 0.05], dtype=torch.float64)
    fn = F.normalize(f, dim=1)
    ref = F.normalize((s[:, None] * fn).sum(0) / s.sum(), dim=0)
    assert torch.allclose(qwfa(f, s), ref)
    keep = s >= 0.3
    assert torch.allclose(qwfaf(f, s, 0.3), F.normalize((s[keep, None] * fn[keep]).sum(0), dim=0))
    assert torch.allclose(qwfaf(f, s * 0.1, 0.3), F.normalize(fn.mean(0), dim=0))
    # no thresholds: the progressive template equals QWFA (Eq. 8-9 reduce to Eq. 7)
    agg = ProgressiveAggregator(f_th=-2.0, s_th=-1.0)
    for i in range(7):
        assert agg.update(f[i], float(s[i]))
    assert torch.allclose(agg.template, ref)
    # with thresholds: literal transcription of Eq. 8-9
    agg = ProgressiveAggregator(0.0, 0.3)
    Fr, ssum = fn[0], float(s[0])
    agg.update(f[0], float(s[0]))
    for i in range(1, 7):
        ok = float(F.normalize(Fr, dim=0) @ fn[i]) > 0.0 and float(s[i]) > 0.3
        if ok:
            Fr, ssum = (ssum * Fr + s[i] * fn[i]) / (ssum + s[i]), ssum + float(s[i])
        assert agg.update(f[i], float(s[i])) == ok
    assert torch.allclose(agg.template, F.normalize(Fr, dim=0))


def test_qmagface_template_rule():
    torch.manual_seed(6)
    f = torch.randn(5, 8, dtype=torch.float64) * 3
    tmpl, qt = qmagface_template(f)
    q = f.norm(dim=1)
    assert torch.allclose(qt, (q * q).sum() / q.sum())
    assert torch.allclose(tmpl, F.normalize(f.sum(0), dim=0) * qt)


# ---- QAFace ------------------------------------------------------------------------
def test_qaface_injection_rule():
    inj = QAFaceInjection(4, 3, tau=1.0, ema=0.9, lam=0.5)
    x1 = torch.tensor([[3.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 7.0, 0]])
    w = inj.inject(x1, torch.tensor([0, 1, 1]))
    n = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)
    mu, sd = n.mean(), n.std()  # first batch initialises the statistics
    nh = (n - mu) / sd
    ref_w = torch.where(nh >= -1.0, torch.exp(-nh), torch.zeros_like(nh))
    assert torch.allclose(w, ref_w)
    assert torch.allclose(inj.memory[1], torch.tensor([0, ref_w[1], ref_w[2], 0]).float() / 2)
    x2 = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 9.0]])
    w2 = inj.inject(x2, torch.tensor([2, 2]))
    n2 = torch.tensor([1.0, 9.0], dtype=torch.float64)
    mu2, sd2 = 0.9 * mu + 0.1 * n2.mean(), 0.9 * sd + 0.1 * n2.std()
    nh2 = (n2 - mu2) / sd2
    assert float(w2[0]) == 0.0 and nh2[0] < -1.0  # unrecognisable: ignored
    assert torch.allclose(w2[1], torch.exp(-nh2[1]))
    W = torch.randn(3, 4)
    assert torch.allclose(inj.centres(W), W + 0.5 * inj.memory)
    acc = QAFaceInjection(4, 3, mode="accumulate")
    acc.inject(x1, torch.tensor([0, 1, 1]))
    acc.inject(x1, torch.tensor([0, 1, 1]))
    assert acc.memory[0].abs().sum() > 0
