"""Normalisers and fusion rules against direct numpy formulas (docs/definitions.rst, §3)."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import requires_cuda
from qme_ext import fusion
from qme_ext.datasets import make_example_scoreset
from qme_ext.fusion import asym_ao, fuse, get_normaliser, parse_method

try:
    from qme_ext.metrics import eer as _eer
    from qme_ext.metrics import evaluate as _evaluate
except ImportError:  # until qme_ext.metrics exists: the reference has the same semantics
    from qme_ext.reference import eer_ref as _eer
    from qme_ext.reference import evaluate_ref as _evaluate


@pytest.fixture(scope="module")
def scores():
    return make_example_scoreset(num_probes=40, num_gallery=60, num_subjects=10, seed=1)


@pytest.fixture(scope="module")
def other():
    return make_example_scoreset(num_probes=30, num_gallery=60, num_subjects=10, seed=2)


def _np_norm(name, s, q=None, g=None, stats_from=None):
    """Direct numpy formulas; statistics from ``stats_from`` = (scores, q, g) or s itself."""
    c, cq, cg = stats_from if stats_from is not None else (s, q, g)
    c = np.nan_to_num(np.asarray(c, np.float32)).astype(np.float64)
    s = np.nan_to_num(np.asarray(s, np.float32)).astype(np.float64)
    if name == "zscore":
        return (s - c.mean()) / (c.std() + 1e-10)
    if name == "minmax":
        return (s - c.min()) / (c.max() - c.min() + 1e-10)
    gen = c[cq[:, None] == cg[None, :]]
    if name == "tanh":
        return 0.5 * (np.tanh(0.01 * (s - gen.mean()) / gen.std()) + 1)
    if name == "rhe":
        return (s - c.min()) / (gen.mean() + gen.std() - c.min() + 1e-10)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["zscore", "minmax", "tanh", "rhe"])
def test_normaliser_formula_with_nan(scores, name):
    s = scores.score_mats["gait"].copy()
    s[0, 0] = np.nan  # replaced by 0 like np.nan_to_num
    q, g = scores.q_pids, scores.g_pids
    got = get_normaliser(name).fit((s, q, g)).transform(s)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _np_norm(name, s, q, g), rtol=1e-12, atol=1e-12)
    # "self": fit on the matrix being transformed
    self_fit = get_normaliser(name).fit("self").transform(s, q, g)
    np.testing.assert_allclose(self_fit, got, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["zscore", "minmax", "tanh", "rhe"])
def test_fit_on_one_apply_to_other(scores, other, name):
    cal = (scores.score_mats["face"], scores.q_pids, scores.g_pids)
    norm = get_normaliser(name).fit(cal)
    got = norm.transform(other.score_mats["face"])
    np.testing.assert_allclose(got, _np_norm(name, other.score_mats["face"], stats_from=cal),
                               rtol=1e-12, atol=1e-12)
    # tensors in, tensors out
    t = norm.transform(torch.as_tensor(other.score_mats["face"]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), got)


def test_label_normalisers_need_labels(scores):
    with pytest.raises(ValueError, match="q_pids"):
        get_normaliser("rhe").fit(scores.score_mats["face"])
    with pytest.raises(RuntimeError, match="before fit"):
        get_normaliser("zscore").transform(scores.score_mats["face"])
    with pytest.raises(ValueError, match="unknown normaliser"):
        get_normaliser("softmax")


def test_parse_method():
    assert parse_method("Z-score") == ("zscore", "mean")
    assert parse_method("Min-max") == ("minmax", "mean")
    assert parse_method("RHE") == ("rhe", "mean")
    assert parse_method("mean") == ("raw", "mean")
    assert parse_method("max") == ("raw", "max")
    assert parse_method("weighted") == ("zscore", "weighted")
    assert parse_method("asym_ao") == ("minmax", "asym_ao")
    assert parse_method("bssf") == ("zscore", "bssf")
    assert parse_method("farsight_style") == ("zscore", "farsight_style")
    assert parse_method("zscore:max") == ("zscore", "max")
    assert parse_method("raw:min") == ("raw", "min")
    for bad in ["foo", "zscore:foo", "foo:mean", ""]:
        with pytest.raises(ValueError):
            parse_method(bad)


# ------------------------------------------------------------------------------------------
# Asym-AO
# ------------------------------------------------------------------------------------------
def _grid():
    v = torch.linspace(0, 1, 21, dtype=torch.float64)
    return torch.meshgrid(v, v, indexing="ij")


def test_asym_ao_formula_and_identities():
    a, b = _grid()
    out = asym_ao(a, b)
    an, bn = a.numpy(), b.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = an ** 2 * bn / (an * bn + 1 - bn)
    ref = np.where((an == 0) | (bn == 0), 0.0, ref)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-15)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    v = a[:, 0]
    ones = torch.ones_like(v)
    np.testing.assert_allclose(asym_ao(ones, v).numpy(), v.numpy(), atol=1e-15)  # As(1,b)=b
    np.testing.assert_allclose(asym_ao(v, ones).numpy(), v.numpy(), atol=1e-15)  # As(a,1)=a (m=2)
    assert torch.all(asym_ao(v, torch.zeros_like(v)) == 0)  # As(a,0)=0
    assert torch.all(asym_ao(torch.zeros_like(v), v) == 0)  # As(0,b)=0
    # m = 0: Hamacher product ab / (a + b - ab); m = 1: product
    inner = (a > 0) & (b > 0)
    ham = a * b / (a + b - a * b)
    np.testing.assert_allclose(asym_ao(a, b, m=0)[inner].numpy(), ham[inner].numpy(), rtol=1e-12)
    np.testing.assert_allclose(asym_ao(a, b, m=1).numpy(), (a * b).numpy(), atol=1e-15)
    # inputs outside [0, 1] (test scores beyond the calibration range) are clipped first
    assert float(asym_ao(torch.tensor([1.5]), torch.tensor([-0.2]))[0]) == 0.0


# ------------------------------------------------------------------------------------------
# rules through fuse()
# ------------------------------------------------------------------------------------------
def _stack(scores, norm, key="score_mats", cal=None, stats_key="score_mats"):
    cal = cal or scores
    return np.stack([
        _np_norm(norm, getattr(scores, key)[m],
                 stats_from=(getattr(cal, stats_key)[m], cal.q_pids, cal.g_pids))
        if norm != "raw"
        else getattr(scores, key)[m].astype(np.float64)
        for m in scores.models])


@pytest.mark.parametrize("method, norm, reduce", [
    ("zscore", "zscore", np.mean), ("minmax", "minmax", np.mean), ("rhe", "rhe", np.mean),
    ("tanh", "tanh", np.mean), ("mean", "raw", np.mean), ("min", "raw", np.min),
    ("max", "raw", np.max), ("zscore:max", "zscore", np.max), ("minmax:min", "minmax", np.min),
])
def test_elementwise_rules(scores, method, norm, reduce):
    out = fuse(scores, method)
    assert out.models == scores.models + [method]
    assert out.score_mats[method].dtype == np.float32
    np.testing.assert_allclose(out.score_mats[method], reduce(_stack(scores, norm), axis=0),
                               rtol=1e-6, atol=1e-6)
    # "self-score": merge matrices use the statistics of their model's score matrix
    score_rule = fuse(scores, method, calibration="self-score")
    np.testing.assert_array_equal(score_rule.score_mats[method], out.score_mats[method])
    np.testing.assert_allclose(score_rule.merge_score_mats[method],
                               reduce(_stack(scores, norm, "merge_score_mats"), axis=0),
                               rtol=1e-6, atol=1e-6)
    # "self" (the paper's protocol): zscore/minmax fit each merge matrix on itself
    own = "merge_score_mats" if norm in ("zscore", "minmax") else "score_mats"
    merge = _stack(scores, norm, "merge_score_mats", stats_key=own)
    np.testing.assert_allclose(out.merge_score_mats[method], reduce(merge, axis=0),
                               rtol=1e-6, atol=1e-6)


def test_calibration_set(scores, other):
    out = fuse(other, "zscore", calibration=scores, name="z")
    np.testing.assert_allclose(out.score_mats["z"], _stack(other, "zscore", cal=scores).mean(0),
                               rtol=1e-6, atol=1e-6)
    # issue 9: a calibration lacking some models fuses the models it holds (a fused 'qme'
    # only in the evaluated file stays a row of its own); one holding none is refused
    face_only = fuse(other, "zscore", calibration=scores.subset_models(["face"]), name="z")
    alone = fuse(other.subset_models(["face"]), "zscore", calibration=scores, name="z")
    np.testing.assert_array_equal(face_only.score_mats["z"], alone.score_mats["z"])
    renamed = scores.subset_models(["face"])
    renamed = dataclasses.replace(renamed, models=["nope"],
                                  score_mats={"nope": renamed.score_mats["face"]})
    with pytest.raises(ValueError, match="holds none of the models"):
        fuse(other, "zscore", calibration=renamed)


def test_asym_ao_rule_is_left_fold(scores):
    out = fuse(scores, "asym_ao")
    x = np.clip(_stack(scores, "minmax"), 0, 1)
    acc = x[0]
    for b in x[1:]:
        with np.errstate(divide="ignore", invalid="ignore"):
            nxt = acc ** 2 * b / (acc * b + 1 - b)
        acc = np.clip(np.where((acc == 0) | (b == 0), 0.0, nxt), 0, 1)
    np.testing.assert_allclose(out.score_mats["asym_ao"], acc, rtol=1e-6, atol=1e-7)


def test_weighted_given_and_fitted(scores):
    out = fuse(scores, "weighted", weights=[2, 1, 1])
    z = _stack(scores, "zscore")
    np.testing.assert_allclose(out.score_mats["weighted"], np.tensordot([.5, .25, .25], z, 1),
                               rtol=1e-6, atol=1e-6)
    # default weights are proportional to 1 / EER of each normalised model
    _, res = fuse(scores, "weighted", return_result=True)
    eers = np.array([_eer(z[i], scores.q_pids, scores.g_pids)[0] for i in range(3)])
    np.testing.assert_allclose(res.weights, (1 / eers) / (1 / eers).sum(), rtol=1e-9)


def test_internal_eer_matches_metrics(scores):
    z = _stack(scores, "zscore")[0]
    genuine = scores.q_pids[:, None] == scores.g_pids[None, :]
    assert fusion._split_eer(z[genuine], z[~genuine]) == pytest.approx(
        _eer(z, scores.q_pids, scores.g_pids)[0], abs=1e-12)


def test_bssf_deterministic_and_no_worse_than_equal(scores):
    a, res_a = fuse(scores, "bssf", return_result=True, seed=7)
    b, res_b = fuse(scores, "bssf", return_result=True, seed=7)
    np.testing.assert_array_equal(res_a.weights, res_b.weights)
    np.testing.assert_array_equal(a.score_mats["bssf"], b.score_mats["bssf"])
    assert res_a.weights.sum() == pytest.approx(1.0) and (res_a.weights >= 0).all()
    z = _stack(scores, "zscore")
    q, g = scores.q_pids, scores.g_pids
    assert _eer(np.tensordot(res_a.weights, z, 1), q, g)[0] <= _eer(z.mean(0), q, g)[0] + 1e-12
    np.testing.assert_allclose(a.score_mats["bssf"], np.tensordot(res_a.weights, z, 1),
                               rtol=1e-6, atol=1e-6)


def test_farsight_style(scores):
    out = fuse(scores, "farsight_style")
    z = _stack(scores, "zscore")
    q = scores.quality["face_weights"][:, 0].astype(np.float64)
    w_face = q / 3
    w_other = (1 - w_face) / 2
    ref = w_face[:, None] * z[0] + w_other[:, None] * (z[1] + z[2])
    np.testing.assert_allclose(out.score_mats["farsight_style"], ref, rtol=1e-6, atol=1e-6)
    no_quality = scores.subset_models(["body", "gait"])
    with pytest.raises(ValueError, match="quality"):
        fuse(no_quality, "farsight_style")


def test_unknown_method_and_name(scores):
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(scores, "nope")
    out = fuse(scores, "zscore", name="Z")
    assert out.models[-1] == "Z"


@pytest.mark.parametrize("calibration", ["self", "self-score"])
def test_self_calibrated_baselines_match_qme_reference_protocol(scores, calibration):
    """fuse(..., "self") + evaluate == numpy QME-style normalise_score + mean fusion + evaluate
    (the paper's notebook: zscore/minmax merge matrices with their own statistics);
    "self-score" == the same with the score matrices' statistics for the merge matrices."""
    ids = (scores.q_pids, scores.q_camids, scores.q_clothes_ids, scores.g_pids,
           scores.g_camids, scores.g_clothes_ids, scores.unique_g_pids)
    for method, norm in [("zscore", "zscore"), ("minmax", "minmax"), ("rhe", "rhe"),
                         ("mean", "raw")]:
        fused = fuse(scores, method, calibration=calibration)
        ours = _evaluate(fused.score_mats[method], fused.merge_score_mats[method], *ids)
        own = calibration == "self" and norm in ("zscore", "minmax")
        ref_s = _stack(scores, norm).mean(0).astype(np.float32)
        ref_m = _stack(scores, norm, "merge_score_mats",
                       stats_key="merge_score_mats" if own else "score_mats").mean(0)
        ref_m = ref_m.astype(np.float32)
        ref = _evaluate(ref_s, ref_m, *ids)
        assert ours.keys() == ref.keys()
        for k in ref:
            assert ours[k] == pytest.approx(ref[k], abs=1e-12, nan_ok=True), (method, k)


@requires_cuda
def test_cuda_matches_cpu(scores):
    for method in ["zscore", "rhe", "asym_ao", "farsight_style"]:
        a = fuse(scores, method, device="cpu").score_mats[method]
        b = fuse(scores, method, device="cuda").score_mats[method]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["rhe", "zscore"])
def test_ids_as_tensors_on_the_scores_device(device, name):
    """Ids may come as tensors on the scores' device (e.g. CUDA), not only numpy."""
    from qme_ext.fusion import get_normaliser
    rng = np.random.default_rng(5)
    S = rng.normal(size=(6, 9))
    qp, gp = rng.integers(0, 3, 6), rng.integers(0, 3, 9)
    want = get_normaliser(name).fit((S, qp, gp)).transform(S)
    norm = get_normaliser(name, device=device).fit(
        (torch.from_numpy(S).to(device), torch.from_numpy(qp).to(device),
         torch.from_numpy(gp).to(device)))
    got = norm.transform(torch.from_numpy(S).to(device))
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_score_stats_signed_zero_min_max_is_positive_zero(device, dtype):
    """-0.0 ties +0.0 (the ranking order): a zero min or max is +0.0 whatever the order of
    the data (issue 10, item 5); the other statistics are unchanged by the zero's sign."""
    from qme_ext.ops import fusion as of
    for first in (-0.0, 0.0):
        S = torch.tensor([[first, -first, 0.0], [-0.0, 0.0, 0.0]], dtype=dtype)
        ids = torch.zeros(2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
        out = of.score_stats(S.to(device), ids[0].to(device), ids[1].to(device)).cpu()
        assert out.shape == (2, 5)
        for row in out:
            assert row[0] == 6 and row[1] == 0 and row[2] == 0
            assert not torch.signbit(row[3]) and not torch.signbit(row[4])
            assert not torch.signbit(row[1])
    S = torch.tensor([[1.0, -0.0], [-0.0, 2.0]], dtype=dtype, device=device)
    out = of.score_stats(S, torch.zeros(0, dtype=torch.int64, device=device),
                         torch.zeros(0, dtype=torch.int64, device=device)).cpu()
    assert out[0, 3] == 0 and not torch.signbit(out[0, 3]) and out[0, 4] == 2


def test_score_stats_independent_of_threads_and_strides():
    import qme_ext
    from qme_ext.ops import fusion as of
    g = torch.Generator().manual_seed(9)
    S = torch.randn(16 * 40 + 3, 33000, generator=g, dtype=torch.float64).to(torch.float32)
    q = torch.randint(0, 5, (S.shape[0],), generator=g)
    gp = torch.randint(0, 5, (S.shape[1],), generator=g)
    base = of.score_stats(S, q, gp)
    old = qme_ext.get_num_threads()
    try:
        for n in (1, 2, 3):
            qme_ext.set_num_threads(n)
            assert torch.equal(of.score_stats(S, q, gp), base)
    finally:
        qme_ext.set_num_threads(old)
    assert torch.equal(of.score_stats(S.T.contiguous().T, q, gp), base)
