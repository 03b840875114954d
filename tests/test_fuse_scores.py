"""qme_ext::fuse_scores (normalise + combine in one pass) against its eager definition
qme_ext.reference.fusion.fuse_scores_ref: every rule and normaliser, per-probe weights,
every dtype, strided inputs, NaN/inf, opcheck, validation, and fuse() on top of it."""
import numpy as np
import pytest
import torch

from layouts import TORCH_DTYPES
from qme_ext.ops.fusion import (NORM_AFFINE, NORM_TANH, RULE_ASYM_AO, RULE_MAX, RULE_MIN, RULE_SUM,
                                fuse_scores)
from qme_ext.reference.fusion import fuse_scores_ref

RULES = [RULE_SUM, RULE_MIN, RULE_MAX, RULE_ASYM_AO]


def problem(K=3, P=17, G=23, dtype=torch.float32, seed=0, specials=True):
    g = torch.Generator().manual_seed(seed)
    mats = [(torch.randn(P, G, generator=g, dtype=torch.float64) * (k + 1) + k).to(dtype)
            for k in range(K)]
    if specials:
        mats[0][0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0],
                                      dtype=torch.float64).to(dtype)
    norm = [NORM_AFFINE, NORM_TANH, NORM_AFFINE, NORM_TANH][:K]
    shift = [0.3 * k - 0.2 for k in range(K)]
    div = [1.5 + k for k in range(K)]
    return mats, norm, shift, div


def exact_for(rule, norm):
    # tanh is a libm call on both sides, but torch may vectorise it (1 ulp); the affine
    # normalisers with every rule (Asym-AO at m = 2 squares by multiplication, like
    # torch's pow) are the same roundings in the same order, on the CPU and on CUDA
    return NORM_TANH not in norm


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("per_probe", [False, True])
def test_matches_reference(device, rule, per_probe):
    mats, norm, shift, div = problem()
    if rule == RULE_ASYM_AO:  # asym_ao folds scores in [0, 1]: min-max-like divisors
        shift, div = [-4.0, 0.0, -6.0], [10.0, 1.0, 14.0]
    w = torch.rand(17, 3, dtype=torch.float64) if per_probe else torch.tensor([0.2, 0.5, 0.3],
                                                                               dtype=torch.float64)
    for norms in (norm, [NORM_AFFINE] * 3):
        want = fuse_scores_ref(mats, norms, shift, div, rule, w, 2.0)
        got = fuse_scores([m.to(device) for m in mats], norms, shift, div, rule, w.to(device),
                          2.0, torch.float64).cpu()
        if exact_for(rule, norms):
            assert torch.equal(got, want)
        else:
            assert torch.allclose(got, want, rtol=1e-13, atol=1e-13)
        got32 = fuse_scores([m.to(device) for m in mats], norms, shift, div, rule, w.to(device),
                            2.0, torch.float32).cpu()
        assert got32.dtype == torch.float32
        assert torch.allclose(got32.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_every_dtype_and_layout(device, dtype):
    mats, norm, shift, div = problem(dtype=dtype, seed=2)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    want = fuse_scores_ref(mats, norm, shift, div, RULE_SUM, w)
    views = [mats[0].to(device).T.contiguous().T,  # column-major
             torch.zeros(17, 46, dtype=dtype, device=device)[:, ::2],  # strided
             mats[2].to(device)]
    views[1].copy_(mats[1].to(device))
    got = fuse_scores(views, norm, shift, div, RULE_SUM, w.to(device), 0.0, torch.float64)
    assert torch.allclose(got.cpu(), want, rtol=1e-13, atol=1e-13)


def test_mixed_dtypes_are_promoted(device):
    mats, norm, shift, div = problem(specials=False)
    mats[1] = mats[1].to(torch.float16)
    w = torch.ones(3, dtype=torch.float64)
    want = fuse_scores_ref(mats, norm, shift, div, RULE_MAX, w)
    got = fuse_scores([m.to(device) for m in mats], norm, shift, div, RULE_MAX, w, 0.0,
                      torch.float64)
    assert torch.allclose(got.cpu(), want, rtol=1e-13, atol=1e-13)


def test_single_model_and_empty(device):
    mats, _, _, _ = problem(K=1)
    one = torch.ones(1, dtype=torch.float64)
    got = fuse_scores([mats[0].to(device)], [NORM_AFFINE], [0.0], [1.0], RULE_SUM, one, 0.0,
                      torch.float64).cpu()
    want = torch.nan_to_num(mats[0].double(), nan=0.0, posinf=float(np.finfo(np.float32).max),
                            neginf=-float(np.finfo(np.float32).max))
    assert torch.equal(got, want)
    empty = torch.zeros(0, 5, device=device)
    assert fuse_scores([empty], [0], [0.0], [1.0], RULE_MIN, one, 0.0,
                       torch.float32).shape == (0, 5)


def test_opcheck(device):
    mats, norm, shift, div = problem(P=4, G=5, specials=False)
    torch.library.opcheck(fuse_scores, ([m.to(device) for m in mats], norm, shift, div, RULE_SUM,
                                        torch.rand(3, dtype=torch.float64).to(device), 2.0,
                                        torch.float32),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("change,match", [
    (dict(scores=[]), "scores: expected 1..8"),
    (dict(norm=[0, 1]), "norm: expected 3 entries"),
    (dict(norm=[0, 1, 7]), "norm: expected codes"),
    (dict(rule=9), "rule: expected"),
    (dict(weights=torch.ones(2, dtype=torch.float64)), "weights: expected a float64"),
    (dict(weights=torch.ones(3)), "weights: expected a float64"),
    (dict(out_dtype=torch.float16), "out_dtype"),
])
def test_bad_arguments(change, match):
    mats, norm, shift, div = problem(P=4, G=5)
    args = dict(scores=mats, norm=norm, shift=shift, div=div, rule=RULE_SUM,
                weights=torch.ones(3, dtype=torch.float64), m=2.0, out_dtype=torch.float32)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        fuse_scores(**args)
    with pytest.raises(ValueError, match=r"scores\[1\]: expected shape \(4, 5\)"):
        fuse_scores([mats[0], mats[1][:, :3]], norm[:2], shift[:2], div[:2], RULE_MIN,
                    torch.ones(2, dtype=torch.float64), 0.0, torch.float32)


# ---- qme_ext::score_stats ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", TORCH_DTYPES)
@pytest.mark.parametrize("P,G", [(1, 1), (15, 7), (16, 40), (37, 53)])  # chunk edges at 16 rows
def test_score_stats_matches_reference(device, dtype, P, G):
    from qme_ext.ops.fusion import score_stats
    from qme_ext.reference.fusion import score_stats_ref
    g = torch.Generator().manual_seed(P * G)
    S = (torch.randn(P, G, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    S.view(-1)[::5] = float("nan")
    S.view(-1)[1::7] = float("inf")
    q, gp = torch.randint(0, 4, (P,), generator=g), torch.randint(0, 4, (G,), generator=g)
    want = score_stats_ref(S, q, gp)
    for view in (S, S.T.contiguous().T):
        got = score_stats(view.to(device), q.to(device), gp.to(device)).cpu()
        assert torch.equal(got[:, [0, 3, 4]], want[:, [0, 3, 4]])  # counts, min, max exact
        assert torch.allclose(got[:, 1:3], want[:, 1:3], rtol=1e-12, atol=1e-9)
    no_labels = score_stats(S.to(device), torch.empty(0, dtype=torch.int64, device=device),
                            torch.empty(0, dtype=torch.int64, device=device)).cpu()
    assert torch.equal(no_labels[0], score_stats(S.to(device), q.to(device),
                                                 gp.to(device)).cpu()[0])
    assert no_labels[1].tolist() == [0.0, 0.0, 0.0, float("inf"), -float("inf")]


def test_score_stats_is_deterministic_across_threads():
    import qme_ext
    from qme_ext.ops.fusion import score_stats
    S = torch.randn(1000, 300, generator=torch.Generator().manual_seed(0))
    q, g = torch.randint(0, 50, (1000,)), torch.randint(0, 50, (300,))
    before = qme_ext.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            qme_ext.set_num_threads(n)
            results.append(score_stats(S, q, g))
    finally:
        qme_ext.set_num_threads(before)
    assert all(torch.equal(r, results[0]) for r in results)


def test_score_stats_opcheck_and_arguments(device):
    from qme_ext.ops.fusion import score_stats
    S = torch.randn(5, 6, device=device)
    q, g = torch.arange(5, device=device), torch.arange(6, device=device)
    torch.library.opcheck(score_stats, (S, q, g), test_utils=(
        "test_schema", "test_faketensor", "test_autograd_registration"))
    with pytest.raises(ValueError, match=r"g_pids: expected .*shape \(6,\)"):
        score_stats(S, q, g[:4])
    with pytest.raises(ValueError, match="q_pids: expected a torch.int64"):
        score_stats(S, q.to(torch.int32), g)


@pytest.mark.parametrize("m", [0.5, 1.0, 1.5, 3.0])
def test_asym_ao_exponents(device, m):
    mats, _, _, _ = problem(specials=False)
    norm, shift, div = [NORM_AFFINE] * 3, [-4.0, -2.0, -6.0], [10.0, 5.0, 14.0]
    w = torch.ones(3, dtype=torch.float64)
    want = fuse_scores_ref(mats, norm, shift, div, RULE_ASYM_AO, w, m)
    got = fuse_scores([x.to(device) for x in mats], norm, shift, div, RULE_ASYM_AO,
                      w.to(device), m, torch.float64).cpu()
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("rule", [RULE_MIN, RULE_MAX])
def test_min_max_propagate_nan_like_torch(device, rule):
    """A zero divisor with s == shift gives 0 / 0: NaN wins, as in torch.minimum/maximum."""
    mats = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0]]), torch.tensor([[0.0, 9.0]])]
    norm, shift, div = [NORM_AFFINE] * 3, [0.0, 3.0, 0.0], [1.0, 0.0, 1.0]
    w = torch.ones(3, dtype=torch.float64)
    want = fuse_scores_ref(mats, norm, shift, div, rule, w)
    got = fuse_scores([x.to(device) for x in mats], norm, shift, div, rule, w.to(device), 0.0,
                      torch.float64).cpu()
    assert torch.isnan(want[0, 0]) and torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got[0, 1:], want[0, 1:])
