"""Property tests of the fusion baselines, the QME op and the quality ops.

* fusion normalisers and rules (qme_ext/fusion.py) against direct numpy
  transcriptions of docs/definitions.rst, §3 (the weighted rule's 1/EER weights against
  qme_ext.reference.eer_ref);
* ``qme_ext::expert_fuse`` (forward and autograd) against the plain-PyTorch
  experts of qme_ext/reference/qme.py; half-precision inputs give exactly the
  float32 result of the same rounded values;
* ``qme_ext::qmagface_epilogue`` and ``qme_ext::template_aggregate`` against
  their formulas in float64, and ``QMagFace.fit`` against
  qme_ext/reference/quality.py.

Random shapes including 0 where the op allows it, ties, NaN / +-inf / -0.0,
every dtype, strided and transposed views. Profile: tests/conftest.py.
"""
import contextlib
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")  # a test extra; the GPU machine may lack it
from hypothesis import event, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from layouts import LAYOUTS, Matrix, present
from property_strategies import ids, matrices, values
from qme_ext.ops import qme as _ops_qme, quality as _ops_quality
from qme_ext import fusion
from qme_ext.io import ScoreSet
from qme_ext.quality import QMagFace
from qme_ext.reference import eer_ref
from qme_ext.reference.qme import ReferenceScoreExpert, reference_expert_fuse
from qme_ext.reference.quality import qmagface_fit_reference

F32_MAX = float(np.finfo(np.float32).max)
NORMALISERS = ("zscore", "minmax", "tanh", "rhe", "raw")


# ---------------------------------------------------------------------------
# fusion: normalisers
# ---------------------------------------------------------------------------
def cleaned(m: Matrix) -> np.ndarray:
    """The np.nan_to_num rule fusion documents (NaN -> 0, +-inf -> +-float32 max), float64."""
    r = m.rounded if m.dtype == torch.float64 else m.rounded.astype(np.float32)
    return np.nan_to_num(r, nan=0.0, posinf=F32_MAX, neginf=-F32_MAX).astype(np.float64)


def np_normalise(name, s, cal, genuine):
    """docs/definitions.rst, §3 formulas on float64 arrays; None where the normaliser must refuse."""
    if name == "raw":
        return s
    if name == "zscore":
        return (s - cal.mean()) / (cal.std() + 1e-10)
    if name == "minmax":
        return (s - cal.min()) / (cal.max() - cal.min() + 1e-10)
    gen = cal[genuine]
    if gen.size == 0:
        return None
    if name == "tanh":
        if gen.std() == 0:
            return None
        return 0.5 * (np.tanh(0.01 * (s - gen.mean()) / gen.std()) + 1)
    return (s - cal.min()) / (gen.mean() + gen.std() - cal.min() + 1e-10)


def assert_close_scaled(got, want, rtol=1e-9):
    """|got - want| <= rtol * max(1, max |want|): statistics of +-3.4e38 entries stay exact
    only to a relative rounding of the largest value."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    scale = max(1.0, float(np.max(np.abs(want)))) if np.size(want) else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@given(data=st.data(), name=st.sampled_from(NORMALISERS), self_fit=st.booleans())
def test_normalisers(device, data, name, self_fit):
    P, G = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 10))
    cal = data.draw(matrices(P, G, device=device))
    x = cal if self_fit else data.draw(
        matrices(data.draw(st.integers(0, 5)), data.draw(st.integers(0, 7)), device=device))
    q, g = data.draw(ids(P, 3)), data.draw(ids(G, 3))
    want = np_normalise(name, cleaned(x), cleaned(cal), q[:, None] == g[None, :])
    norm = fusion.get_normaliser(name)
    if want is None:
        event("refused")
        with pytest.raises(ValueError):
            norm.fit("self").transform(x.obj, q, g) if self_fit else norm.fit((cal.obj, q, g))
        return
    out = norm.fit("self").transform(x.obj, q, g) if self_fit else \
        norm.fit((cal.obj, q, g)).transform(x.obj)
    # numpy in -> float64 numpy out; tensor in -> float64 tensor on its device
    assert isinstance(out, type(x.obj)) or (isinstance(x.obj, np.ndarray) and
                                            isinstance(out, np.ndarray))
    if isinstance(out, torch.Tensor):
        assert out.dtype == torch.float64 and out.device == x.obj.device
    assert_close_scaled(out, want)


# ---------------------------------------------------------------------------
# fusion: rules through fuse()
# ---------------------------------------------------------------------------
def np_asym_ao(a, b, m):
    a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = a ** m * b / (a ** (m - 1) * b + 1 - b)
    return np.clip(np.where((a == 0) | (b == 0), 0.0, out), 0, 1)


@given(data=st.data(), m=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]))
def test_asym_ao(device, data, m):
    shape = (data.draw(st.integers(0, 5)), data.draw(st.integers(0, 6)))
    grid = st.sampled_from([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
    a = np.asarray(data.draw(st.lists(grid, min_size=shape[0] * shape[1],
                                      max_size=shape[0] * shape[1]))).reshape(shape)
    b = data.draw(values(shape, specials=False)) % 1.25
    ta, tb = torch.tensor(a, device=device), torch.tensor(b, device=device)
    ca, cb = ta.clone(), tb.clone()
    out = fusion.asym_ao(ta, tb, m)
    assert torch.equal(ta, ca) and torch.equal(tb, cb)  # inputs untouched
    np.testing.assert_allclose(out.cpu().numpy(), np_asym_ao(a, b, m), rtol=1e-12, atol=1e-15)


def _scoreset(data, K, with_quality):
    n_sub = data.draw(st.integers(1, 4))
    P, G = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 8))
    models = ["face", "body", "gait"][:K]
    rnd = lambda *shape: cleaned(present(data.draw(values(shape)), torch.float32,  # noqa: E731
                                         "contiguous", True)).astype(np.float32)
    quality = {}
    if with_quality:
        quality["face_weights"] = (data.draw(values((P, 1))) % 1.2).astype(np.float32)
    return ScoreSet(models=models, score_mats={mm: rnd(P, G) for mm in models},
                    merge_score_mats={mm: rnd(P, n_sub) for mm in models},
                    q_pids=data.draw(ids(P, 3)), q_camids=np.zeros(P, np.int64),
                    q_clothes_ids=np.zeros(P, np.int64), g_pids=data.draw(ids(G, 3)),
                    g_camids=np.zeros(G, np.int64), g_clothes_ids=np.zeros(G, np.int64),
                    unique_g_pids=np.arange(n_sub), quality=quality)


def np_combine(rule, mats, w, m):
    if rule == "asym_ao":
        acc = np.clip(mats[0], 0, 1)
        for s in mats[1:]:
            acc = np_asym_ao(acc, s, m)
        return acc
    if rule in ("min", "max"):
        return (np.minimum if rule == "min" else np.maximum).reduce(mats)
    w = np.asarray(w)  # (K,) or per probe (P, K)
    return sum((w[:, k, None] if w.ndim == 2 else w[k]) * s for k, s in enumerate(mats))


def np_farsight_weights(base, q):
    """(P, K): face (model 0) weight base_0 * q, the rest share 1 - base_0 * q pro rata."""
    q = np.clip(np.nan_to_num(q.astype(np.float64)), 0, 1)[:, 0]
    w = np.tile(base, (q.size, 1))
    w[:, 0] = base[0] * q
    rest = base[1:].sum()
    if rest > 0:
        w[:, 1:] = base[1:] / rest * (1 - w[:, :1])
    else:
        w[:, 0] = 1.0
    return w


@given(data=st.data(), rule=st.sampled_from(fusion.RULES), norm=st.sampled_from(NORMALISERS),
       own_calibration=st.booleans(), m=st.sampled_from([1.0, 2.0, 3.0]))
def test_fuse_rules(device, data, rule, norm, own_calibration, m):
    K = data.draw(st.integers(1, 3))
    ss = _scoreset(data, K, with_quality=rule == "farsight_style")
    cal = ss if own_calibration else _scoreset(data, K, with_quality=False)
    given_w = None
    if rule in ("mean", "weighted", "bssf", "farsight_style") and data.draw(st.booleans()):
        given_w = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=K,
                                     max_size=K).filter(lambda v: sum(v) > 0))
    genuine = cal.q_pids[:, None] == cal.g_pids[None, :]
    nz = lambda x: np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=F32_MAX,  # noqa: E731
                                 neginf=-F32_MAX)
    # "self" (the paper's rule): zscore/minmax merge matrices with their own statistics;
    # "self-score" and a calibration set: the score matrix's statistics for both
    self_rule = data.draw(st.sampled_from(fusion.SELF_CALIBRATIONS)) if own_calibration else None
    own_merge = self_rule == "self" and norm in ("zscore", "minmax")
    normed, normed_merge = [], []
    for mm in ss.models:
        c = nz(cal.score_mats[mm])
        normed.append(np_normalise(norm, nz(ss.score_mats[mm]), c, genuine))
        merge = nz(ss.merge_score_mats[mm])
        normed_merge.append(np_normalise(norm, merge, merge if own_merge else c, genuine))
    method = f"{norm}:{rule}"
    call = lambda: fusion.fuse(ss, method, calibration=self_rule or cal,  # noqa: E731
                               weights=given_w, m=m, return_result=True, device=device)
    refuse = any(v is None for v in normed) or (
        rule in ("weighted", "bssf") and given_w is None and (genuine.all() or not genuine.any()))
    if refuse:
        event("refused")
        with pytest.raises(ValueError):
            call()
        return
    out, res = call()
    if given_w is not None:
        base = np.asarray(given_w, dtype=np.float64) / sum(given_w)
    elif rule == "weighted":
        c_normed = [np_normalise(norm, nz(cal.score_mats[mm]), nz(cal.score_mats[mm]), genuine)
                    for mm in ss.models]
        inv = 1.0 / np.maximum([eer_ref(c, cal.q_pids, cal.g_pids)[0] for c in c_normed], 1e-6)
        base = inv / inv.sum()
    elif rule == "bssf":  # a searched optimum: check it is a convex weight vector
        base = res.weights
        assert np.all(base >= 0) and abs(base.sum() - 1) < 1e-12
    else:
        base = np.full(K, 1.0 / K)
    if rule in ("mean", "weighted", "bssf", "farsight_style"):
        np.testing.assert_allclose(res.weights, base, rtol=1e-12)
    w = np_farsight_weights(base, ss.quality["face_weights"]) if rule == "farsight_style" \
        else base
    name = method
    for got, mats in ((out.score_mats[name], normed), (out.merge_score_mats[name], normed_merge)):
        want = np_combine(rule, mats, w, m)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert_close_scaled(got.astype(np.float64), want.astype(np.float32).astype(np.float64),
                            rtol=1e-6)


# ---------------------------------------------------------------------------
# qme_ext::expert_fuse
# ---------------------------------------------------------------------------
@st.composite
def experts(draw, K, Z):
    """Z reference experts in eval mode (random BatchNorm statistics), float64."""
    ratio = draw(st.integers(1, 3))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    refs = []
    for _ in range(Z):
        e = ReferenceScoreExpert(K, ratio, dropout=0.0).double().eval()
        with torch.no_grad():
            e.bn.running_mean.uniform_(-1, 1)
            e.bn.running_var.uniform_(0.2, 3)
            e.bn.weight.uniform_(0.5, 1.5)
            e.bn.bias.uniform_(-1, 1)
        refs.append(e)
    return refs


def op_params(refs):
    """The op's (a, c, w1, b1, w2, b2): BatchNorm folded into one affine map per channel."""
    a = torch.stack([e.bn.weight / torch.sqrt(e.bn.running_var + e.bn.eps) for e in refs])
    c = torch.stack([e.bn.bias for e in refs]) - torch.stack([e.bn.running_mean for e in refs]) * a
    return [t.detach() for t in (a, c, torch.stack([e.fc1.weight for e in refs]),
                                 torch.stack([e.fc1.bias for e in refs]),
                                 torch.stack([e.fc2.weight[0] for e in refs]),
                                 torch.stack([e.fc2.bias[0] for e in refs]))]


@st.composite
def expert_problem(draw, device, max_b, max_k, max_g, max_z, min_bg=0, **matrix_kw):
    """(x (B, K, G) Matrix, gate (B, Z) float64 in [0, 1), Z float64 reference experts)."""
    B, G = draw(st.integers(min_bg, max_b)), draw(st.integers(min_bg, max_g))
    K = draw(st.integers(1, max_k))
    Z = draw(st.integers(1, max_z))
    refs = draw(experts(K, Z))
    x = draw(matrices(B, K, G, device=device, allow_numpy=False, **matrix_kw))
    return x, torch.from_numpy(draw(values((B, Z), specials=False)) % 1.0), refs


@given(data=st.data())
def test_expert_fuse(device, data):
    x, gate, refs = data.draw(expert_problem(device, 4, 8, 12, 3))
    B, G = x.rounded.shape[0], x.rounded.shape[2]
    params = [p.to(device) for p in op_params(refs)] + [gate.to(device)]
    seed = data.draw(st.integers(0, 2**63 - 1))
    out = _ops_qme.expert_fuse(x.obj, *params, 0.0, seed)
    with torch.no_grad():
        want = reference_expert_fuse(torch.from_numpy(x.rounded), gate, *refs)
    assert out.shape == (B, G) and out.device == x.obj.device
    if x.dtype == torch.float64:
        assert out.dtype == torch.float64
        torch.testing.assert_close(out.cpu(), want, rtol=1e-10, atol=1e-10, equal_nan=True)
        return
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu().double(), want, rtol=5e-5, atol=5e-5, equal_nan=True)
    # half precision = the float32 path on the same rounded values, bit for bit
    same = _ops_qme.expert_fuse(x.obj.float().contiguous(), *params, 0.0, seed)
    torch.testing.assert_close(out, same, rtol=0, atol=0, equal_nan=True)  # NaN payloads aside


@given(data=st.data())
def test_expert_fuse_autograd(device, data):
    x, gate, refs = data.draw(expert_problem(device, 3, 4, 9, 2, min_bg=1, specials=False,
                                             dtypes=(torch.float64,)))
    B, G = x.rounded.shape[0], x.rounded.shape[2]
    w = torch.from_numpy(data.draw(values((B, G), specials=False)))
    xo = x.obj.detach().clone().requires_grad_()  # keeps the strides of the view
    g1 = gate.clone().to(device).requires_grad_()
    (_ops_qme.expert_fuse(xo, *[p.to(device) for p in op_params(refs)], g1, 0.0, 0)
     * w.to(device)).sum().backward()
    xr, g2 = torch.from_numpy(x.rounded).requires_grad_(), gate.clone().requires_grad_()
    (reference_expert_fuse(xr, g2, *refs) * w).sum().backward()
    torch.testing.assert_close(xo.grad.cpu(), xr.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g1.grad.cpu(), g2.grad, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------
# quality ops
# ---------------------------------------------------------------------------
@given(data=st.data(), out_dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                                   torch.float64]),
       out_layout=st.sampled_from(LAYOUTS))
def test_qmagface_epilogue(device, data, out_dtype, out_layout):
    p, g = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 9))
    cos = data.draw(matrices(p, g, device=device, allow_numpy=False, scale=0.5))
    qp = torch.from_numpy(np.abs(data.draw(values((p,), specials=False, scale=20.0))))
    qg = torch.from_numpy(np.abs(data.draw(values((g,), specials=False, scale=20.0))))
    alpha, beta = data.draw(st.floats(0, 0.2)), data.draw(st.floats(0, 0.3))
    out = present(np.full((p, g), -3.0), out_dtype, out_layout, False, device).obj
    before = cos.obj.clone()
    _ops_quality.qmagface_epilogue(cos.obj, qp.to(device), qg.to(device), alpha, beta, out)
    assert torch.equal(cos.obj, before) or torch.isnan(before).any()
    s = cos.rounded
    q = np.minimum(qp.numpy()[:, None], qg.numpy()[None, :])
    with np.errstate(invalid="ignore"):
        # omega = min(0, beta s - alpha) as "x if x < 0 else 0": with beta = 0 the NaN of
        # 0 * inf gives omega = 0 (its value for every finite s), not NaN
        x = beta * s - alpha
        omega = np.where(x < 0, x, 0.0)
        want = omega * q + s
    got = out.cpu().double().numpy()
    fast_cpu = device == "cpu" and cos.dtype == out_dtype == torch.float32 and \
        cos.obj.stride(-1) == 1 and out.stride(-1) == 1
    if fast_cpu:
        # float arithmetic (the vectorised CPU float32 tile path): a few float32 ulps, no
        # precision below float32's normal range (alpha, beta may round to 0 there), plus
        # the final rounding to the output dtype
        f32 = np.finfo(np.float32)
        with np.errstate(invalid="ignore"):
            bound = 4 * f32.eps * (np.abs(omega * q) + np.abs(s)) + f32.tiny + \
                torch.finfo(out_dtype).eps * np.abs(want)
            ok = (np.abs(got - want) <= bound) | (got == want) | (np.isnan(got) & np.isnan(want))
        assert ok.all()
    else:  # computed in float64 and rounded once to the output dtype
        np.testing.assert_array_equal(got, torch.from_numpy(want).to(out_dtype).double().numpy())


def np_template_aggregate(f, w, offsets, normalize):
    """Sequential float64 sums, in row order, skipping zero weights (the op's contract)."""
    T, D = len(offsets) - 1, f.shape[1]
    tpl, wsum, norm = np.zeros((T, D)), np.zeros(T), np.zeros(T)
    for t in range(T):
        acc, W = np.zeros(D), 0.0
        for i in range(offsets[t], offsets[t + 1]):
            if w[i] != 0:
                W += w[i]
                acc = acc + w[i] * f[i]
        if W == 0:
            continue
        mean = acc / W
        n = float(np.sqrt(np.sum(mean * mean)))
        tpl[t] = mean / n if normalize and n > 0 else mean
        wsum[t], norm[t] = W, n
    return tpl, wsum, norm


@given(data=st.data(), normalize=st.booleans(),
       wdtype=st.sampled_from([torch.float32, torch.float64]))
def test_template_aggregate(device, data, normalize, wdtype):
    N, D, T = data.draw(st.integers(0, 12)), data.draw(st.integers(0, 5)), data.draw(
        st.integers(0, 4))
    if T == 0:
        N = 0
    f = data.draw(matrices(N, D, device=device, allow_numpy=False))
    w = np.abs(data.draw(values((N,), specials=False)))
    w[w < 0.3] = 0.0  # zero weights (whole zero-weight templates too)
    w = torch.from_numpy(w).to(wdtype)
    cuts = sorted(data.draw(st.lists(st.integers(0, N), min_size=max(T - 1, 0),
                                     max_size=max(T - 1, 0))))
    offsets = [0] + cuts + [N] if T else [0]
    off_t = torch.tensor(offsets, dtype=torch.int64)
    fb, wb = f.obj.clone(), w.clone()
    tpl, wsum, norm = _ops_quality.template_aggregate(f.obj, w.to(device), off_t.to(device),
                                                      normalize)
    assert torch.equal(f.obj.nan_to_num(), fb.nan_to_num()) and torch.equal(w, wb)
    want = np_template_aggregate(f.rounded, w.double().numpy(), offsets, normalize)
    # float64 accumulation on the CPU; CUDA accumulates float32 weights in float
    tol = dict(rtol=1e-12, atol=1e-12) if wdtype == torch.float64 else \
        dict(rtol=3e-7, atol=1e-7) if device == "cpu" else dict(rtol=2e-5, atol=2e-5)
    for got, exp in zip((tpl, wsum, norm), want):
        assert got.dtype == wdtype
        np.testing.assert_allclose(got.cpu().double().numpy(), exp, equal_nan=True, **tol)


@given(data=st.data(), space=st.sampled_from(["sigmoid", "raw"]))
def test_qmagface_fit(data, space):
    # identities = noisy copies of a few centres (genuine pairs score higher), quantised
    # values and norms give ties; some data sets are degenerate (both must refuse)
    n_feat, D, n_id = data.draw(st.integers(4, 40)), data.draw(st.integers(2, 6)), data.draw(
        st.integers(1, 6))
    who = data.draw(ids(n_feat, n_id))
    noise = data.draw(st.sampled_from([0.1, 0.5, 1.0]))
    feats = data.draw(values((n_id, D), specials=False))[who] + noise * data.draw(
        values((n_feat, D), specials=False))
    feats[np.linalg.norm(feats, axis=1) == 0] = 1.0  # embeddings have a positive norm
    feats *= np.abs(data.draw(values((n_feat, 1), specials=False, scale=10.0))) + 5.0
    n = data.draw(st.integers(4, 400))
    pairs = data.draw(ids(2 * n, n_feat)).reshape(n, 2)
    labels = who[pairs[:, 0]] == who[pairs[:, 1]]
    fmrs = data.draw(st.lists(st.sampled_from([1e-5, 1e-3, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3,
                                               0.4, 0.5, 0.7]), min_size=2, max_size=10))
    n_omega = data.draw(st.integers(2, 20))
    with np.errstate(all="ignore"), quiet():
        try:
            alpha, beta, ts, _ = qmagface_fit_reference(feats, pairs, labels, space, fmrs,
                                                        n_omega)
        except ValueError:  # e.g. a single class: argmin of an empty FNMR list
            alpha = beta = np.nan
            ts = np.zeros(0)
    qm = QMagFace()
    # documented refusal: one class, or fewer than two distinct finite thresholds (the
    # literal reference then fits a line through rounding noise or returns NaN)
    if not (labels.any() and not labels.all()) or np.unique(ts[np.isfinite(ts)]).size < 2:
        event("both refuse")
        with pytest.raises(ValueError), quiet():
            qm.fit(feats, pairs, labels, space, fmrs, n_omega)
        return
    event("compared")
    with quiet():  # "FMR(s) admit no genuine pair": the reference drops them silently
        qm.fit(feats, pairs, labels, space, fmrs, n_omega)
    np.testing.assert_allclose([qm.alpha, qm.beta], [alpha, beta], rtol=1e-9, atol=1e-12)


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
