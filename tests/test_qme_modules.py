"""QME modules and losses: gates, quality estimator, torch.compile, loss values."""
import pytest
import torch

from qme_ext.qme import QME, QualityEstimator, ScoreExpert, pseudo_quality_loss, score_triplet_loss
from qme_ext.qme.losses import best_genuine_rank
from qme_ext.qme.modules import gate_weights


def scores(B=4, K=3, G=40, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, K, G), generator=g).to(device), torch.rand(B, generator=g).to(device)


def test_z2_gate_is_exactly_q_and_one_minus_q(device):
    q = torch.rand(50, device=device)
    w = gate_weights(q, 2, 50, device=device)
    assert torch.equal(w[:, 0], q) and torch.equal(w[:, 1], 1 - q)
    torch.manual_seed(0)
    m = QME(["a", "b", "c"], num_experts=2, dropout=0.0).to(device).eval()
    x, q = scores(device=device)
    e1 = QME(["a", "b", "c"], num_experts=1).to(device).eval()
    e2 = QME(["a", "b", "c"], num_experts=1).to(device).eval()
    e1.experts[0].load_state_dict(m.experts[0].state_dict())
    e2.experts[0].load_state_dict(m.experts[1].state_dict())
    expected = q[:, None] * e1(x) + (1 - q[:, None]) * e2(x)
    torch.testing.assert_close(m(x, q), expected, rtol=1e-6, atol=1e-6)


def test_general_gate_hat_functions():
    q = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 1.7, -0.2])
    w = gate_weights(q, 3, 7)
    expected = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1],
                             [1, 0, 0], [0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(w, expected)
    w5 = gate_weights(torch.rand(100), 5, 100)
    assert torch.all(w5 >= 0) and torch.allclose(w5.sum(1), torch.ones(100))
    assert torch.equal(gate_weights(None, 1, 4), torch.ones(4, 1))


@pytest.mark.parametrize("Z", [1, 3])
def test_z1_and_z3_kernel_matches_torch_path(device, Z):
    torch.manual_seed(0)
    m = QME(["a", "b"], num_experts=Z, dropout=0.0).to(device)
    ref = QME(["a", "b"], num_experts=Z, dropout=0.0, use_kernel=False).to(device)
    ref.load_state_dict(m.state_dict())
    x, q = scores(K=2, device=device)
    qq = None if Z == 1 else q
    for _ in range(2):
        torch.testing.assert_close(m(x, qq), ref(x, qq), rtol=1e-5, atol=1e-5)
    m.eval(), ref.eval()
    torch.testing.assert_close(m(x, qq), ref(x, qq), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError) if Z > 1 else torch.no_grad():
        m(x, None)


def test_state_dict_names_like_batchnorm():
    keys = set(QME(["a", "b"]).state_dict())
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert f"experts.0.{name}" in keys and f"experts.1.{name}" in keys
    e = ScoreExpert(3)
    assert e.fc1.weight.shape == (9, 3) and e.fc2.weight.shape == (1, 9)


def test_dropout_training_runs_and_eval_is_deterministic(device):
    m = QME(["a", "b", "c"], dropout=0.5).to(device)
    x, q = scores(device=device)
    x.requires_grad_()
    out = m(x, q)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert not torch.equal(m(x, q), m(x, q))  # fresh masks each call
    m.eval()
    assert torch.equal(m(x, q), m(x, q))


def test_torch_compile_forward(device):
    torch.manual_seed(0)
    m = QME(["a", "b", "c"]).to(device).eval()
    x, q = scores(device=device)
    eager = m(x, q)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, q), eager)
    m.train()
    x.requires_grad_()
    out = torch.compile(m, backend="aot_eager")(x, q)  # train: graph break at the seed draw
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_quality_estimator(device):
    torch.manual_seed(0)
    qe = QualityEstimator(64).to(device).eval()
    assert qe.fc1.out_features == 32 and qe.fc2.out_features == 512
    assert float(qe.fc1.bias.detach().abs().sum()) == 0.0
    assert abs(float(qe.fc2.weight.detach().std()) - 0.02) < 0.003
    f = torch.randn(5, 64, device=device)
    f[2] = 0
    q = qe(f)
    assert q.shape == (5,) and q[2].item() == 0.0
    assert torch.all((q[[0, 1, 3, 4]] > 0) & (q[[0, 1, 3, 4]] < 1))
    frames = torch.randn(3, 4, 64, device=device)
    frames[0, 1:] = 0      # one face frame
    frames[1] = 0          # no face at all
    qf = qe(frames)
    assert qf.shape == (3,) and qf[1].item() == 0.0
    torch.testing.assert_close(qf[0], qe(frames[0, :1])[0])
    torch.testing.assert_close(qf[2], qe(frames[2]).mean())


def test_best_genuine_rank_counts_ties_by_index():
    S = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2],
                      [0.3, 0.3, 0.3, 0.3, 0.3],
                      [0.5, 0.4, 0.3, 0.2, 0.1]])
    g_pids = torch.tensor([0, 1, 2, 3, 1])
    r = best_genuine_rank(S, torch.tensor([3, 1, 7]), g_pids)
    # probe 0: genuine col 3 (0.9) ties col 1, which has the lower index -> rank 2
    # probe 1: genuine cols 1 and 4 all tied -> col 1 first -> rank 2; probe 2: none -> N
    assert r.tolist() == [2, 2, 5]


def test_pseudo_quality_targets():
    # ranks 1, 5, 20 with delta = 10 -> targets 1, 5/9, 0
    N = 30
    S = torch.zeros(3, N)
    g_pids = torch.arange(N)
    S[:, :] = -torch.arange(N, dtype=torch.float32)  # column j has rank j + 1
    q_pids = torch.tensor([0, 4, 19])
    q = torch.zeros(3, requires_grad=True)
    loss = pseudo_quality_loss(q, S, q_pids, g_pids, rank_threshold=10)
    expected = torch.tensor([1.0, 5 / 9, 0.0])
    torch.testing.assert_close(loss, (expected ** 2).mean())
    loss.backward()
    torch.testing.assert_close(q.grad, -2 * expected / 3)
    q2 = torch.tensor([1.0, 0.5556, 0.0])
    assert pseudo_quality_loss(q2, S, q_pids, g_pids, 10).item() < 1e-8
    with pytest.raises(ValueError):
        pseudo_quality_loss(q2, S, q_pids, g_pids, 1)


def test_score_triplet_loss():
    F = torch.tensor([[2.0, -1.0, 0.5], [0.2, 3.0, -0.5]], requires_grad=True)
    q_pids, g_pids = torch.tensor([0, 1]), torch.tensor([0, 1, 2])
    # genuine: (0,0)=2 -> 0, (1,1)=3 -> 0; impostors: -1, 0.5, 0.2, -0.5 -> relu mean 0.175
    torch.testing.assert_close(score_triplet_loss(F, q_pids, g_pids), torch.tensor(0.175))
    torch.testing.assert_close(score_triplet_loss(F, q_pids, g_pids, margin=2.5),
                               torch.tensor(0.175 + 0.25))
    # no genuine entries at all: that mean contributes 0
    torch.testing.assert_close(score_triplet_loss(F, torch.tensor([5, 6]), g_pids),
                               torch.relu(F).mean())
    score_triplet_loss(F, q_pids, g_pids).backward()
    assert F.grad is not None


@pytest.mark.parametrize("use_kernel", [True, False])
def test_quality_on_the_cpu_with_scores_on_the_device(device, use_kernel):
    """q often comes from numpy (estimate_quality): a CPU q with device scores works, in
    both paths, and its gradient comes back on the CPU."""
    torch.manual_seed(0)
    model = QME(["face", "body", "gait"], num_experts=2, use_kernel=use_kernel).to(device)
    model.eval()
    x = torch.randn(4, 3, 7, device=device)
    q = torch.rand(4, requires_grad=True)
    out = model(x, q)
    ref = model(x, q.detach().to(device))
    assert torch.allclose(out, ref)
    out.sum().backward()
    assert q.grad is not None and q.grad.device.type == "cpu"
