"""qme_ext::expert_fuse / expert_fuse_bwd against the plain-PyTorch oracle."""
import pytest
import torch

import qme_ext
from conftest import requires_cuda
from qme_ext.ops import qme as ops
from qme_ext.qme.modules import QME
from qme_ext.reference.qme import ReferenceScoreExpert, load_expert_state, reference_expert_fuse


def make_params(Z=2, K=3, H=9, B=3, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, lo=-1.0, hi=1.0):
        return (torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(
            device=device, dtype=dtype)

    return dict(a=r(Z, K, lo=0.5, hi=1.5), c=r(Z, K), w1=r(Z, H, K), b1=r(Z, H), w2=r(Z, H),
                b2=r(Z), gate=r(B, Z, lo=0.0, hi=1.0))


def torch_fuse(x, a, c, w1, b1, w2, b2, gate):
    """Direct formula (no dropout) for the op's semantics."""
    y = x[:, None] * a[None, :, :, None] + c[None, :, :, None]          # (B, Z, K, G)
    h = torch.nn.functional.selu(torch.einsum("zhk,bzkg->bzhg", w1, y) + b1[None, :, :, None])
    e = torch.einsum("zh,bzhg->bzg", w2, h) + b2[None, :, None]
    return (gate[:, :, None] * e).sum(1)


def model_and_refs(K=3, Z=2, device="cpu", dtype=torch.float32):
    torch.manual_seed(1)
    m = QME([f"m{i}" for i in range(K)], num_experts=Z, dropout=0.0).to(device, dtype)
    refs = [load_expert_state(ReferenceScoreExpert(K, 3, 0.0), e).to(device, dtype)
            for e in m.experts]
    return m, refs


def batch(B=4, K=3, G=37, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, K, G), generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.5, 3.0, K, dtype=torch.float64)[None, :, None] + 0.7
    return x.to(device, dtype), torch.rand(B, generator=g, dtype=torch.float64).to(device, dtype)


def test_op_matches_formula(device):
    p = make_params(device=device)
    x = torch.randn(3, 3, 50, dtype=torch.float64, device=device)
    out = ops.expert_fuse(x, *p.values(), 0.0, 0)
    torch.testing.assert_close(out, torch_fuse(x, *p.values()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K,Z", [(3, 2), (1, 1), (5, 3), (8, 2)])
def test_qme_train_and_eval_match_reference(device, K, Z):
    m, refs = model_and_refs(K, Z, device)
    for step in range(3):
        x, q = batch(K=K, device=device, seed=step)
        out = m(x, q)
        ref = reference_expert_fuse(x, m.gate(q, x.shape[0]), *refs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for e, r in zip(m.experts, refs):
        torch.testing.assert_close(e.running_mean, r.bn.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(e.running_var, r.bn.running_var, rtol=1e-6, atol=1e-6)
        assert int(e.num_batches_tracked) == int(r.bn.num_batches_tracked) == 3
    m.eval()
    for r in refs:
        r.eval()
    x, q = batch(K=K, device=device, seed=9)
    torch.testing.assert_close(m(x, q), reference_expert_fuse(x, m.gate(q, 4), *refs),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_gradients_match_reference(device, train):
    # float64 end to end: the BatchNorm-statistics chain rule goes through torch ops.
    m, refs = model_and_refs(3, 2, device, torch.float64)
    m.train(train)
    for r in refs:
        r.train(train)
    x, q = batch(G=5000, device=device, dtype=torch.float64)  # > one CPU work tile per row
    x1, q1 = x.clone().requires_grad_(), q.clone().requires_grad_()
    x2, q2 = x.clone().requires_grad_(), q.clone().requires_grad_()
    (m(x1, q1).sin().sum()).backward()
    (reference_expert_fuse(x2, m.gate(q2, 4, torch.float64), *refs).sin().sum()).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-9, atol=1e-9)
    for e, r in zip(m.experts, refs):
        torch.testing.assert_close(e.weight.grad, r.bn.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(e.bias.grad, r.bn.bias.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(e.fc1.weight.grad, r.fc1.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(e.fc1.bias.grad, r.fc1.bias.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(e.fc2.weight.grad, r.fc2.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(e.fc2.bias.grad, r.fc2.bias.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dropout,seed", [(0.0, 0), (0.3, 1234)])
def test_gradcheck_float64(device, dropout, seed):
    p = make_params(Z=2, K=2, H=3, B=2, device=device)
    x = torch.randn(2, 2, 7, dtype=torch.float64, device=device)
    args = [t.clone().requires_grad_() for t in (x, *p.values())]
    assert torch.autograd.gradcheck(lambda *t: ops.expert_fuse(*t, dropout, seed), args)


def test_dropout_mask_regenerated_and_seeded(device):
    p = make_params(device=device)
    x = torch.randn(3, 3, 4000, dtype=torch.float64, device=device)
    f = lambda s: ops.expert_fuse(x, *p.values(), 0.5, s)  # noqa: E731
    assert torch.equal(f(7), f(7))
    assert not torch.equal(f(7), f(8))
    # Dropout with one hidden unit: F = b2 + w2 * keep * selu(.), keep in {0, 2}.
    q = make_params(Z=1, K=3, H=1, B=3, device=device)
    out = ops.expert_fuse(x, *q.values(), 0.5, 3)
    base = ops.expert_fuse(x, *q.values(), 0.0, 3)
    b2, gate = q["b2"][0], q["gate"][:, :1]
    ratio = (out - gate * b2) / (base - gate * b2)
    dropped = (ratio.abs() < 1e-9).double().mean().item()
    assert torch.all((ratio.abs() < 1e-9) | ((ratio - 2).abs() < 1e-9))
    assert 0.47 < dropped < 0.53


def test_half_precision_and_strided_inputs(device):
    p = make_params(dtype=torch.float32, device=device)
    base = torch.randn(3, 50, 3, device=device)  # x = base.transpose(1, 2): strided view
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        xs = base.to(dt).transpose(1, 2)
        out = ops.expert_fuse(xs, *p.values(), 0.0, 0)
        assert out.dtype == torch.float32
        ref = ops.expert_fuse(xs.float().contiguous(), *p.values(), 0.0, 0)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    x = base.to(torch.float16).transpose(1, 2).requires_grad_()
    ops.expert_fuse(x, *p.values(), 0.0, 0).sum().backward()
    assert x.grad.dtype == torch.float16 and x.grad.shape == x.shape


@pytest.mark.parametrize("B,G", [(5, 20000), (3000, 7)])  # column tiles / row groups
def test_backward_deterministic_and_thread_independent(B, G):
    p = make_params(B=B, dtype=torch.float32)
    x = torch.randn(B, 3, G)
    g = torch.randn(B, G)
    n = qme_ext.get_num_threads()
    try:
        qme_ext.set_num_threads(1)
        one = ops.expert_fuse_bwd(g, x, *p.values(), 0.2, 5)
        qme_ext.set_num_threads(3)
        three = ops.expert_fuse_bwd(g, x, *p.values(), 0.2, 5)
    finally:
        qme_ext.set_num_threads(n)
    for u, v in zip(one, three):
        assert torch.equal(u, v)
    # and they are the right numbers: the float64 twin (same mask, gradchecked above)
    ref = ops.expert_fuse_bwd(g.double(), x.double(), *[v.double() for v in p.values()], 0.2, 5)
    for u, v in zip(one, ref):
        torch.testing.assert_close(u.double(), v, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mean", [100.0, 1000.0])
def test_float32_large_mean_matches_float64(device, mean):
    """Scores with a large mean (an uncentred matcher, e.g. cosine*100 or raw distances):
    the folded BatchNorm has c ~ -a * mean, so a * x + c and sum dy * x cancel in float.
    Both twins evaluate the affine centred and sum dL/da as sum dy * (x - m) + m * sum dy
    (expert::centred_affine); uncentred float32 was off by up to 4e-2 (grad_x) and 2e-3
    (grad_w1) of the gradients' scale here, centred it is within 1e-6."""
    p = make_params(Z=2, K=3, H=9, B=4, dtype=torch.float64, seed=2)
    p["c"] = p["c"] - mean * p["a"]
    p = {k: v.float().to(device) for k, v in p.items()}
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 3, 50000, generator=g, dtype=torch.float64) + mean).float().to(device)
    gr = torch.randn(4, 50000, generator=g, dtype=torch.float64).float().to(device)
    p64 = [v.double() for v in p.values()]
    out = ops.expert_fuse(x, *p.values(), 0.0, 3).double()
    out64 = ops.expert_fuse(x.double(), *p64, 0.0, 3)
    assert (out - out64).abs().max().item() <= 1e-6 * out64.abs().max().item()
    got = ops.expert_fuse_bwd(gr, x, *p.values(), 0.0, 3)
    ref = ops.expert_fuse_bwd(gr.double(), x.double(), *p64, 0.0, 3)
    for i, (u, r) in enumerate(zip(got, ref)):
        scale = r.abs().max().item()
        assert (u.double() - r).abs().max().item() <= 1e-6 * scale, i


def test_empty_inputs(device):
    p = make_params(B=0, device=device)
    x = torch.zeros(0, 3, 5, dtype=torch.float64, device=device)
    assert ops.expert_fuse(x, *p.values(), 0.0, 0).shape == (0, 5)
    grads = ops.expert_fuse_bwd(torch.zeros(0, 5, dtype=torch.float64, device=device), x,
                                *p.values(), 0.0, 0)
    assert all(float(t.abs().sum()) == 0.0 for t in grads)


def test_bad_arguments():
    p = make_params()
    with pytest.raises(ValueError):
        ops.expert_fuse(torch.randn(2, 9, 4, dtype=torch.float64), *p.values(), 0.0, 0)
    with pytest.raises(ValueError):
        ops.expert_fuse(torch.randn(3, 3, 4, dtype=torch.float64), *p.values(), 1.0, 0)


def test_opcheck(device):
    p = make_params(device=device)
    x = torch.randn(3, 3, 11, dtype=torch.float64, device=device)
    args = [t.clone().requires_grad_() for t in (x, *p.values())]
    torch.library.opcheck(torch.ops.qme_ext.expert_fuse.default, (*args, 0.25, 3))
    g = torch.randn(3, 11, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.qme_ext.expert_fuse_bwd.default,
                          (g, x, *p.values(), 0.25, 3))


@requires_cuda
def test_cuda_matches_cpu_including_dropout_mask():
    p = make_params(dtype=torch.float64)
    x = torch.randn(3, 3, 9000, dtype=torch.float64)
    g = torch.randn(3, 9000, dtype=torch.float64)
    pc = {k: v.cuda() for k, v in p.items()}
    for drop in (0.0, 0.3):
        out_cpu = ops.expert_fuse(x, *p.values(), drop, 11)
        out_gpu = ops.expert_fuse(x.cuda(), *pc.values(), drop, 11)
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-10, atol=1e-10)
        for u, v in zip(ops.expert_fuse_bwd(g.cuda(), x.cuda(), *pc.values(), drop, 11),
                        ops.expert_fuse_bwd(g, x, *p.values(), drop, 11)):
            torch.testing.assert_close(u.cpu(), v, rtol=1e-9, atol=1e-9)
    a = ops.expert_fuse_bwd(g.cuda(), x.cuda(), *pc.values(), 0.3, 11)
    b = ops.expert_fuse_bwd(g.cuda(), x.cuda(), *pc.values(), 0.3, 11)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # no float atomics


def test_float32_selu_matches_float64_over_wide_range(device):
    # The float32 CPU path uses an inline expm1 (range reduction + polynomial):
    # pre-activations from about -90 to +30 must agree with the float64 path.
    p = make_params(Z=1, K=1, H=1, B=1, dtype=torch.float64, device=device)
    p["a"].fill_(1.0), p["c"].fill_(0.0), p["w1"].fill_(1.0), p["b1"].fill_(0.0)
    p["w2"].fill_(1.0), p["b2"].fill_(0.0), p["gate"].fill_(1.0)
    v = torch.cat([torch.linspace(-90, 30, 20001), torch.linspace(-1e-3, 1e-3, 2001)])
    x = v.reshape(1, 1, -1).to(device)
    f64 = ops.expert_fuse(x.double(), *p.values(), 0.0, 0)
    f32 = ops.expert_fuse(x.float(), *(t.float() for t in p.values()), 0.0, 0)
    torch.testing.assert_close(f64, torch.nn.functional.selu(x.double()).reshape(1, -1))
    torch.testing.assert_close(f32.double(), f64, rtol=3e-7, atol=1e-9)
    special = torch.tensor([float("-inf"), float("inf"), float("nan"), -0.0, 0.0]).reshape(1, 1, -1)
    for dt in (torch.float32, torch.float64):
        out = ops.expert_fuse(special.to(device, dt), *(t.to(dt) for t in p.values()), 0.0, 0)
        ref = torch.nn.functional.selu(special.double()).reshape(1, -1)
        torch.testing.assert_close(out.double().cpu(), ref, equal_nan=True)
