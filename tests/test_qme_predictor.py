"""Issue 26: one inference path (qme.Predictor, the Fuser protocol), per-probe Z-norm,
cross-validated selection, and the generator's correlated-error properties."""
import numpy as np
import pytest
import torch

from qme_ext import metrics, topk
from qme_ext.datasets.synthetic import synthetic_wholebody
from qme_ext.fusion import FusionResult, fit_fusion
from qme_ext.io import ScoreSet
from qme_ext.qme import search
from qme_ext.qme import train as T
from qme_ext.qme.checkpoint import load_predictor
from qme_ext.qme.predictor import Fuser, Predictor, ensemble_rows, znorm_rows
from qme_ext.qme.selection import cross_validate, subset

SMALL = dict(num_subjects=24, num_train_subjects=30, num_val_subjects=16, num_unknown=6)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return synthetic_wholebody("mixed", seed=21, score_drift=0.5, video_degradation=0.6,
                               twin_fraction=0.3, noface_fraction=0.2, **SMALL)


@pytest.fixture(scope="module")
def robust(data):
    """A robust-recipe QME (short budget) with stratum offsets, and its QE."""
    cfg = T.TrainConfig(max_steps=60, eval_every=30, qe_steps=40, quiet=True)
    assert cfg.recipe == "robust" and cfg.open_set
    qe = T.fit_quality_estimator(data["train"], data["val"], cfg)
    model = T.fit_qme(data["train"], data["val"], qe, cfg)
    if not (model.open_set or {}).get("calibration"):   # make sure the offsets are exercised
        T._TrainView(data["train"], model.models, qe, cfg, CPU).calibrate(model, "log-odds")
    assert model.open_set["calibration"]
    return model, qe


def _features(n, d, rng):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_generator_new_properties_default_off_and_on():
    base = synthetic_wholebody("mixed", seed=4, **SMALL)
    again = synthetic_wholebody("mixed", seed=4, video_degradation=0.0, twin_fraction=0.0,
                                noface_fraction=None, **SMALL)
    for m in base["test"].models:
        np.testing.assert_array_equal(base["test"].score_mats[m], again["test"].score_mats[m])
    on = synthetic_wholebody("face_good", seed=4, noface_fraction=0.3, **SMALL)
    frac = 1 - on["meta"]["test"]["has_face"].mean()
    assert 0.15 < frac < 0.45

    def genuine_correlation(deg):
        """Mean pairwise correlation of the probes' best genuine face/body/gait scores."""
        d = synthetic_wholebody("face_good", seed=4, video_degradation=deg, num_subjects=60,
                                num_train_subjects=30, num_val_subjects=16, num_unknown=6)
        t = d["test"]
        gen = t.q_pids[:, None] == t.g_pids[None, :]
        mated = gen.any(axis=1) & d["meta"]["test"]["has_face"]
        b = [np.nanmax(np.where(gen, t.score_mats[m], np.nan)[mated], axis=1)
             for m in ("face", "body", "gait")]
        c = np.corrcoef(np.stack(b))
        return (c[0, 1] + c[0, 2] + c[1, 2]) / 3
    # one shared video degradation: the matchers' genuine scores fall together
    assert genuine_correlation(0.6) > genuine_correlation(0.0) + 0.1
    # twins: look-alikes in every modality raise the best impostor score of every matcher
    tw = synthetic_wholebody("face_good", seed=4, twin_fraction=0.6, twin_similarity=0.95,
                             **SMALL)["test"]
    no = synthetic_wholebody("face_good", seed=4, **SMALL)["test"]
    for m in ("face", "body", "gait"):
        hi = [np.median(np.where(t.q_pids[:, None] != t.g_pids[None, :], t.score_mats[m],
                                 -np.inf).max(axis=1)) for t in (tw, no)]
        assert hi[0] > hi[1], (m, hi)
    with pytest.raises(ValueError, match="video_degradation"):
        synthetic_wholebody("mixed", seed=0, video_degradation=-1.0, **SMALL)


def test_fuser_protocol_is_met_by_baselines_and_predictor(data, robust):
    res = fit_fusion("rhe", data["train"])
    assert isinstance(res, FusionResult) and isinstance(res, Fuser)
    assert isinstance(Predictor.from_qme(*robust), Fuser)


def test_robust_model_scores_the_same_through_every_path(data, robust, tmp_path):
    """predict, Predictor.fuse_block, a checkpoint's Predictor, evaluate_embeddings and
    search give the same fused scores (absent faces and stratum offsets included)."""
    from qme_ext.qme.checkpoint import save_checkpoint
    model, qe = robust
    test = data["test"]
    s0, m0 = T.predict(model, qe, test)
    pred = Predictor.from_qme(model, qe)
    s1, m1 = pred.fuse_block(test)
    np.testing.assert_array_equal(s0, s1)
    np.testing.assert_array_equal(m0, m1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, qe, T.TrainConfig(quiet=True), model.models,
                    {"predictor": pred.spec()})
    s2, m2 = load_predictor(path).fuse_block(test)
    np.testing.assert_array_equal(s0, s2)
    np.testing.assert_array_equal(m0, m2)
    # the fused search: top-k values and columns of the predictor's rows
    for p in (pred, Predictor(pred.kind, pred.models, model=model, qe=qe, scale="znorm")):
        S = p.fuse_block(test)[0]
        ref = topk(S, 5)
        got = search(p, test, 5, tile=17)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-5)
    # embeddings: features whose cosine scores are the score matrices; the quality is the
    # predictor's own (QE on the quality features, faceless probes at 0)
    rng = np.random.default_rng(0)
    P, G = 40, 30
    pf = {m: _features(P, 16, rng) for m in model.models}
    gf = {m: _features(G, 16, rng) for m in model.models}
    g_pids = np.repeat(np.arange(10), 3)
    pf["face"][:5] = 0.0            # no face: cosine 0 -> an all-zero row, absent
    q_pids = np.arange(P) % 12
    ids = dict(q_pids=q_pids, q_camids=np.zeros(P, np.int64),
               q_clothes_ids=np.zeros(P, np.int64), g_pids=g_pids,
               g_camids=np.ones(G, np.int64), g_clothes_ids=np.zeros(G, np.int64))
    qual = {"face": test.quality["face"][:P].copy()}
    qual["face"][:5] = 0.0
    uniq = np.arange(10)
    tmpl = {m: np.stack([gf[m][g_pids == s].mean(0) for s in uniq]) for m in gf}
    S_e, M_e = metrics.embeddings.embedding_matrices(
        {m: v.copy() for m, v in pf.items()}, gf, g_pids=g_pids, fusion=pred, quality=qual,
        metric="dot", gallery_templates=tmpl, unique_g_pids=uniq,
        ids={**ids, "unique_g_pids": uniq})
    block = ScoreSet(models=list(model.models),
                     score_mats={m: pf[m] @ gf[m].T for m in model.models},
                     merge_score_mats={m: pf[m] @ tmpl[m].T for m in model.models},
                     quality=qual, unique_g_pids=uniq, **ids)
    s3, m3 = pred.fuse_block(block)
    np.testing.assert_allclose(S_e.numpy(), s3, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(M_e.numpy(), m3, rtol=1e-5, atol=1e-5)


def test_znorm_is_a_monotone_increasing_map_of_each_row():
    rng = np.random.default_rng(1)
    S = rng.normal(3.0, 2.0, (20, 50)).astype(np.float32)
    S[3] = 1.5                                   # a constant row: left at 0, not NaN
    M = rng.normal(3.0, 2.0, (20, 8)).astype(np.float32)
    zs, zm = znorm_rows(S, M)
    assert np.isfinite(zs).all() and np.isfinite(zm).all()
    for r in range(20):
        o = np.argsort(S[r], kind="stable")
        assert (np.diff(zs[r][o]) >= 0).all()    # order kept (ties stay ties)
        a = (zs[r][o[-1]] - zs[r][o[0]]) / max(S[r][o[-1]] - S[r][o[0]], 1e-30)
        assert a >= 0
        np.testing.assert_array_equal(np.argsort(zs[r], kind="stable"), o)
    # the merge row goes through the same map as its score row
    mu, sd = S[0].astype(np.float64).mean(), S[0].astype(np.float64).std()
    np.testing.assert_allclose(zm[0], (M[0] - mu) / sd, rtol=1e-5)
    s_e, _ = ensemble_rows([(S, None), (2 * S + 1, None)])
    np.testing.assert_allclose(s_e, zs, rtol=1e-5, atol=1e-5)


def test_baseline_predictor_round_trips_through_its_spec(data, robust):
    model, qe = robust
    res = fit_fusion("farsight_style", data["train"])
    pred = Predictor.from_fusion(res, scale="znorm")
    back = Predictor.from_parts(model, qe, pred.spec())
    a, b = pred.fuse_block(data["test"]), back.fuse_block(data["test"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    ens = Predictor.ensemble([pred, Predictor.from_qme(model, qe)])
    again = Predictor.from_parts(model, qe, ens.spec())
    np.testing.assert_array_equal(ens.fuse_block(data["test"])[0],
                                  again.fuse_block(data["test"])[0])


def test_cross_validation_reports_every_fold(data):
    cfg = T.TrainConfig(quiet=True, cv_folds=3)
    sel = cross_validate(data["train"], data["val"], None, cfg, baselines=("zscore", "rhe"),
                         fold_qme=False)
    s = sel.summary()
    assert sel.chosen in s
    assert "fusion:rhe+znorm" in s and "model:face" in s and "ensemble:top2" in s
    for v in s.values():
        assert len(v["folds"]) == 3 and np.isfinite(v["folds"]).all()
        assert v["mean"] == pytest.approx(np.mean(v["folds"]))
    assert s[sel.chosen]["mean"] == max(v["mean"] for v in s.values())
    # folds are subject-disjoint: a held-out subset shares no subject with its complement
    tr = data["train"]
    out = np.isin(tr.q_pids, np.unique(tr.q_pids)[:5])
    a = subset(tr, out, np.isin(tr.g_pids, np.unique(tr.q_pids)[:5]))
    b = subset(tr, ~out, ~np.isin(tr.g_pids, np.unique(tr.q_pids)[:5]))
    assert not set(a.q_pids) & set(b.q_pids) and not set(a.g_pids) & set(b.g_pids)


def test_paper_recipe_does_not_select():
    cfg = T.TrainConfig(recipe="paper")
    assert not cfg.select and T.TrainConfig().select == "cv"
