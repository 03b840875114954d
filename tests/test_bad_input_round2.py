"""Issue 27 (bad input, round two): a test per row of the issue. Command-line rows check
the exit status, the one ``qme-ext: error:`` line and that the folder is byte-unchanged
(helpers of tests/test_bad_input.py); API rows a ValueError/TypeError naming the argument.
The output rule's rows are in tests/test_output_rule.py."""
import json

import numpy as np
import pytest
import torch

from qme_ext import cli, metrics
from qme_ext.metrics import protocols

from test_bad_input import _refused_unchanged


def _run_json(capsys, tmp_path, argv) -> dict:
    out = tmp_path / "out.json"
    assert cli.main([str(a) for a in argv] + ["--json", str(out), "--quiet"]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------
# labels only when the user says so; orientation on every path
# ------------------------------------------------------------------------------------------
def test_verify_01_impostor_scores_are_scores_not_labels(tmp_path, capsys):
    (tmp_path / "g.txt").write_text("0.9\n0.8\n0.7\n")
    (tmp_path / "i.txt").write_text("0\n1\n0\n")
    rep = _run_json(capsys, tmp_path, ["verify", tmp_path / "g.txt", tmp_path / "i.txt"])
    assert rep["g.txt"]["num_genuine"] == 3 and rep["g.txt"]["num_impostor"] == 3


def test_verify_histogram_of_01_scores_is_not_labels(tmp_path, capsys):
    (tmp_path / "g.txt").write_text("0.5\n0.25\n")
    (tmp_path / "h.txt").write_text("1\n1\n")  # one impostor score 0, one score 1
    rep = _run_json(capsys, tmp_path, ["verify", tmp_path / "g.txt", tmp_path / "h.txt",
                                       "--impostor-format", "histogram"])
    assert rep["g.txt"]["num_genuine"] == 2 and rep["g.txt"]["num_impostor"] == 2


def test_api_labels_only_by_name():
    gen, imp = np.array([0.9, 0.8, 0.7]), np.array([0.0, 1.0, 0.0])
    r = metrics.verification(gen, imp)
    assert (r.num_genuine, r.num_impostor) == (3, 3)
    r = metrics.verification(np.r_[gen, imp], labels=[1, 1, 1, 0, 0, 0])
    assert (r.num_genuine, r.num_impostor) == (3, 3)
    with pytest.raises(TypeError, match="impostor: a bool vector"):
        metrics.verification(gen, np.array([True, False, True]))
    with pytest.raises(TypeError, match="impostor, labels"):
        metrics.verification(gen, imp, labels=[1, 0, 1])
    de = metrics.dev_eval(gen, imp, gen, imp)
    assert de.dev.num_impostor == 3 and de.eval.num_genuine == 3


def _distance_sets(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.4, 0.2, 300), rng.normal(1.0, 0.2, 3000),
            rng.normal(0.45, 0.2, 300), rng.normal(1.0, 0.2, 3000))


def test_dev_eval_honours_distances():
    dg, di, eg, ei = _distance_sets(3)
    got = metrics.dev_eval(dg, di, eg, ei, larger_is_better=False)
    want = metrics.dev_eval(-dg, -di, -eg, -ei)
    for p, q in zip(got.points, want.points):
        assert p.threshold == -q.threshold
        assert (p.dev_fmr, p.dev_fnmr, p.eval_fmr, p.eval_fnmr) == \
            (q.dev_fmr, q.dev_fnmr, q.eval_fmr, q.eval_fnmr)
    assert got.points[0].eval_hter < 0.2  # read as similarities it was about 0.8
    np.testing.assert_array_equal(got.epc[1], want.epc[1])
    np.testing.assert_array_equal(got.epc[2], -want.epc[2])
    a = metrics.dev_eval(dg, di, eg, ei)  # the wrong orientation: a much worse HTER
    assert a.points[0].eval_hter > 0.5
    # a distance threshold accepts d <= t on eval
    t = got.points[0].threshold
    assert got.points[0].eval_fnmr == np.count_nonzero(eg > t) / eg.size


def test_verify_distance_dev_eval(tmp_path, capsys):
    dg, di, eg, ei = _distance_sets(4)
    for n, v in zip(("dg", "di", "eg", "ei"), (dg, di, eg, ei)):
        np.savetxt(tmp_path / f"{n}.txt", v)
    f = [tmp_path / f"{n}.txt" for n in ("dg", "di", "eg", "ei")]
    rep = _run_json(capsys, tmp_path, ["verify", "--distance", "--dev", f[0], f[1],
                                       "--eval", f[2], f[3]])
    want = metrics.dev_eval(dg, di, eg, ei, larger_is_better=False)
    assert rep["dev_eval"]["EER_eval_HTER"] == pytest.approx(want.points[0].eval_hter)
    assert rep["dev_eval"]["EER_eval_HTER"] < 0.2
    assert rep["dev_eval"]["EER_threshold"] == pytest.approx(want.points[0].threshold)


def test_p_target_numpy_float_accepted():
    r = metrics.verification([1.0, 2.0], [0.0, 0.5], p_target=np.float32(0.05))
    assert r.dcf_costs[0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="p_target"):
        metrics.verification([1.0, 2.0], [0.0, 0.5], p_target=True)


# ------------------------------------------------------------------------------------------
# features: finite input never gives a non-finite score; one check of the ids
# ------------------------------------------------------------------------------------------
def _emb(seed=0, P=40, G=60, D=16, S=10):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(S, D))
    g_pids, q_pids = np.arange(G) % S, rng.integers(0, S, P)
    gal = (centres[g_pids] + 0.8 * rng.normal(size=(G, D))).astype(np.float32)
    pro = (centres[q_pids] + 0.8 * rng.normal(size=(P, D))).astype(np.float32)
    ids = dict(q_pids=q_pids, q_camids=np.zeros(P, int), q_clothes_ids=np.zeros(P, int),
               g_pids=g_pids, g_camids=np.ones(G, int), g_clothes_ids=np.zeros(G, int))
    return pro, gal, ids


def _float64_scores(pro, gal, g_pids, metric):
    """(P, G) and (P, S) float64 scores of the features against the gallery rows and the
    per-subject mean templates (of the normalised rows under cosine)."""
    p, g = pro.astype(np.float64), gal.astype(np.float64)
    if metric == "cosine":
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    t = np.stack([g[g_pids == k].mean(0) for k in np.unique(g_pids)])
    if metric == "cosine":
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        return p @ g.T, p @ t.T
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    return dist(p, g), dist(p, t)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_scaled_features_give_finite_scores_and_the_same_report(scale, metric):
    pro, gal, ids = _emb()
    s1, m1 = metrics.embedding_matrices(pro * np.float32(scale), gal * np.float32(scale),
                                        g_pids=ids["g_pids"], metric=metric)
    assert bool(torch.isfinite(s1).all()) and bool(torch.isfinite(m1).all())
    unit = 1.0 if metric == "cosine" else scale
    # against the float64 scores of the unscaled features, not the float32 path s0: one
    # full-suite run saw s0 itself off by 1.6e-4 on half its rows (one BLAS thread, not
    # reproduced in 3,000 repeats) while the scaled s1 was right
    want_s, want_m = _float64_scores(pro, gal, ids["g_pids"], metric)
    np.testing.assert_allclose(s1.double().numpy() / unit, want_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m1.double().numpy() / unit, want_m, rtol=1e-4, atol=1e-5)
    r0 = metrics.evaluate_embeddings(pro, gal, metric=metric, **ids)
    r1 = metrics.evaluate_embeddings(pro * np.float32(scale), gal * np.float32(scale),
                                     metric=metric, **ids)
    assert r1["GR_top1"] == r0["GR_top1"] and r1["GR_mAP"] == pytest.approx(r0["GR_mAP"])


def test_features_in_the_usual_range_are_scored_as_before():
    """No scaling is applied in the usual range: the scores are bit-identical to the plain
    matmul of normalised rows."""
    pro, gal, ids = _emb(1)
    s, _ = metrics.embedding_matrices(pro, gal, g_pids=ids["g_pids"], metric="euclidean")
    p, g = torch.from_numpy(pro), torch.from_numpy(gal)
    want = ((p * p).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * p @ g.T).clamp_min(0).sqrt()
    assert torch.equal(s, want)
    s, _ = metrics.embedding_matrices(pro, gal, g_pids=ids["g_pids"], metric="cosine")
    pn = p / torch.linalg.vector_norm(p, dim=1, keepdim=True)
    gn = g / torch.linalg.vector_norm(g, dim=1, keepdim=True)
    assert torch.equal(s, pn @ gn.T)


@pytest.mark.parametrize("scale,needle", [(1e30, "exceed"), (1e-30, "underflows")])
def test_dot_products_beyond_the_dtype_are_refused(scale, needle):
    pro, gal, ids = _emb()
    with pytest.raises(ValueError, match=f"probe_feats, gallery_feats: .*{needle}"):
        metrics.evaluate_embeddings(pro * np.float32(scale), gal * np.float32(scale),
                                    metric="dot", **ids)
    r = metrics.evaluate_embeddings(pro * np.float32(1e15), gal * np.float32(1e-15),
                                    metric="dot", **ids)  # representable: scored
    assert np.isfinite(r["GR_mAP"])


def test_embeddings_refuse_unique_g_pids_missing_a_gallery_subject_like_evaluate():
    pro, gal, ids = _emb()
    uniq = np.arange(9)  # subject 9 has gallery entries
    with pytest.raises(ValueError) as emb:
        metrics.evaluate_embeddings(pro, gal, unique_g_pids=uniq, **ids)
    S = np.zeros((40, 60), np.float32)
    with pytest.raises(ValueError) as ev:
        metrics.evaluate(S, np.zeros((40, 9), np.float32), ids["q_pids"], ids["q_camids"],
                         ids["q_clothes_ids"], ids["g_pids"], ids["g_camids"],
                         ids["g_clothes_ids"], uniq)
    assert str(emb.value) == str(ev.value) and "unique_g_pids" in str(emb.value)


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_embeddings_device_errors_name_the_argument(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    pro, gal, ids = _emb()
    with pytest.raises(ValueError, match="^device: "):
        metrics.evaluate_embeddings(pro, gal, device=device, **ids)


def test_max_memory_beyond_a_float_is_a_named_error(tmp_path, capsys):
    pro, gal, ids = _emb()
    with pytest.raises(ValueError, match="^max_memory: "):
        metrics.evaluate_embeddings(pro, gal, max_memory="1e400", **ids)
    np.savez(tmp_path / "e.npz", probe_feats=pro, gallery_feats=gal, q_pids=ids["q_pids"],
             g_pids=ids["g_pids"])
    line = _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", tmp_path / "e.npz",
                                                 "--max-memory", "1e400"], "--max-memory")
    assert "1e400" in line


# ------------------------------------------------------------------------------------------
# erc, single_gallery_shot, AQE, k-reciprocal: named errors, integer ids, finite results
# ------------------------------------------------------------------------------------------
def _matrix(seed=0, P=20, G=30, S=5):
    rng = np.random.default_rng(seed)
    q, g = rng.integers(0, S, P), np.arange(G) % S
    return rng.normal(size=(P, G)) + 2.0 * (q[:, None] == g[None, :]), q, g


def test_erc_and_single_gallery_shot_refuse_an_all_nan_matrix():
    S, q, g = _matrix()
    nan = np.full_like(S, np.nan)
    with pytest.raises(ValueError, match="scores: no finite score"):
        metrics.erc(nan, q, g, np.ones(len(q)))
    with pytest.raises(ValueError, match="no finite score"):
        metrics.erc_pairs([np.nan], [np.nan, np.inf], [1.0])
    with pytest.raises(ValueError, match="scores: no finite score"):
        protocols.single_gallery_shot(nan, q, g)


def test_erc_compares_ids_as_integers():
    big = 2 ** 53
    S = np.array([[1.0, 0.0], [0.0, 1.0]])
    q = np.array([big, big + 1], dtype=np.int64)
    r = metrics.erc(S, q, q.copy(), [0.5, 0.7], rejection=[0.0])
    assert r.num_genuine[0] == 2  # as float64 both ids were one: 4 genuine pairs
    with pytest.raises(ValueError, match="q_pids: float ids must hold integers"):
        metrics.erc(S, [0.5, 1.0], [0, 1], [0.5, 0.7])
    with pytest.raises(TypeError, match="q_quality: expected real numbers"):
        metrics.erc(S, [0, 1], [0, 1], np.array([0.5 + 1j, 0.7]))
    with pytest.raises(TypeError, match="q_quality"):
        metrics.erc(S, [0, 1], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="fmr"):
        metrics.erc(S, [0, 1], [0, 1], [0.5, 0.7], fmr="0.1")


def test_single_gallery_shot_repeats_and_seed_are_named():
    S, q, g = _matrix()
    with pytest.raises(ValueError, match="repeats: expected at most"):
        protocols.single_gallery_shot(S, q, g, repeats=10 ** 12)
    for seed in (-1, "a", 2 ** 40):
        with pytest.raises(ValueError, match="^seed: "):
            protocols.single_gallery_shot(S, q, g, seed=seed)


def test_aqe_huge_alpha_is_finite_and_inf_alpha_named():
    from qme_ext import rerank
    S, q, g = _matrix()
    rng = np.random.default_rng(1)
    gg = rng.normal(size=(30, 30)) + 3.0
    plain = rerank.average_query_expansion(S + 3.0, gg, k=3, alpha=3.0)
    for alpha in (1e3, 1e300):
        out = rerank.average_query_expansion(S + 3.0, gg, k=3, alpha=alpha)
        assert np.isfinite(out).all()
    assert np.array_equal(plain, rerank.average_query_expansion(S + 3.0, gg, k=3, alpha=3.0))
    for alpha in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="^alpha: "):
            rerank.average_query_expansion(S, gg, k=3, alpha=alpha)
    with pytest.raises(TypeError, match="^alpha: "):
        rerank.average_query_expansion(S, gg, k=3, alpha="big")


def test_k_reciprocal_lambda_value_is_named():
    from qme_ext import rerank
    S, q, g = _matrix(P=6, G=8)
    qq, gg = np.eye(6), np.eye(8)
    with pytest.raises(TypeError, match="^lambda_value: "):
        rerank.k_reciprocal(S, qq, gg, k1=3, k2=2, lambda_value="x")
    with pytest.raises(ValueError, match="^lambda_value: "):
        rerank.k_reciprocal(S, qq, gg, k1=3, k2=2, lambda_value=float("nan"))


# ------------------------------------------------------------------------------------------
# options validated before any work: the error is the only line
# ------------------------------------------------------------------------------------------
@pytest.fixture
def score_file(tmp_path):
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    ss = make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6, seed=1)
    save_scores(tmp_path / "a.h5", ss)
    return tmp_path / "a.h5"


@pytest.mark.parametrize("extra,needle", [
    (["--max-memory", "1e400"], "--max-memory"),
    (["--single-shot", str(10 ** 9)], "--single-shot"),
    (["--single-shot", "0"], "--single-shot"),
    (["--ranked-lists", "0"], "--ranked-lists"),
    (["--seed", "-1"], "--seed"),
    (["--ci", "2"], "--ci"),
])
def test_evaluate_option_errors_come_before_any_work(score_file, capsys, extra, needle):
    # not --quiet: a progress line before the error would make it two lines
    _refused_unchanged(capsys, score_file.parent, ["evaluate", score_file] + extra, needle)


def test_embeddings_option_errors_come_before_any_work(tmp_path, capsys):
    pro, gal, ids = _emb()
    np.savez(tmp_path / "e.npz", probe_feats=pro, gallery_feats=gal, q_pids=ids["q_pids"],
             g_pids=ids["g_pids"])
    for extra, needle in ((["--seed", "-5"], "--seed"), (["--device", "meta"], "--device")):
        _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", tmp_path / "e.npz"]
                           + extra, needle)


# ------------------------------------------------------------------------------------------
# checkpoint extra fields: validated by the schema at load
# ------------------------------------------------------------------------------------------
# the fixtures (checkpoint, example, files) of the issue-23 value rows
from test_bad_input_values import (_digest, _tamper, assert_user_error,  # noqa: E402,F401
                                   checkpoint, example, files, run)


def _open_set(offsets, **kw):
    spec = dict(quality_model=None, quality_name=None, method="tails",
                calibration=dict(edges=[0.1, 0.2, 0.3], keys=[0], offsets=offsets,
                                 quality_index=None))
    spec.update(kw)
    return lambda d: d["extra"].__setitem__("open_set", spec)


EXTRA_TAMPERED = {
    "NaN offset": (_open_set([float("nan")]), "extra.open_set.calibration.offsets"),
    "1e39 offset": (_open_set([1e39]), "extra.open_set.calibration.offsets"),
    "offsets a string": (_open_set("0.5"), "extra.open_set.calibration.offsets"),
    "offsets longer than keys": (_open_set([0.1, 0.2]), "extra.open_set.calibration.offsets"),
    "unknown quality model": (_open_set([0.1], quality_model="iris"),
                              "extra.open_set.quality_model"),
    "open_set a string": (lambda d: d["extra"].__setitem__("open_set", "on"),
                          "extra.open_set' must be a dict"),
    "calibration a string": (lambda d: d["extra"].__setitem__(
        "open_set", dict(quality_model=None, calibration="x")), "extra.open_set.calibration"),
    "safety net a string": (lambda d: d["extra"].__setitem__("safety_net", "kept"),
                            "extra.safety_net"),
    "safety net entry a list": (lambda d: d["extra"].__setitem__(
        "safety_net", {"kept_start": [1]}), "extra.safety_net.kept_start"),
    "config a string": (lambda d: d.__setitem__("config", "robust"), "'config' must be a dict"),
}


@pytest.mark.parametrize("variant", sorted(EXTRA_TAMPERED))
def test_checkpoint_extra_fields_are_checked_at_load(capsys, tmp_path, files, checkpoint,
                                                     variant):
    from qme_ext.qme.checkpoint import CheckpointError, load_checkpoint
    edit, needle = EXTRA_TAMPERED[variant]
    bad = tmp_path / "bad.pt"
    torch.save(_tamper(torch.load(checkpoint, weights_only=True), edit), bad)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        load_checkpoint(bad)
    before = _digest(files["ex"])
    assert_user_error(run(capsys, "fuse", bad, files["ex"], "--out", tmp_path / "f.h5"),
                      needle)
    assert not (tmp_path / "f.h5").exists() and _digest(files["ex"]) == before


def test_checkpoint_with_finite_offsets_still_fuses(capsys, tmp_path, files, checkpoint):
    good = tmp_path / "good.pt"
    torch.save(_tamper(torch.load(checkpoint, weights_only=True), _open_set([0.25])), good)
    assert cli.main(["fuse", str(good), str(files["ex"]), "--out", str(tmp_path / "f.h5"),
                     "--quiet"]) == 0


# ------------------------------------------------------------------------------------------
# API argument errors name the argument
# ------------------------------------------------------------------------------------------
def test_api_sizes_and_seeds_are_named_errors():
    from qme_ext import fusion
    from qme_ext.datasets import make_example_scoreset
    ss = make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6, seed=1)
    ids = [getattr(ss, k) for k in ("q_pids", "q_camids", "q_clothes_ids", "g_pids",
                                    "g_camids", "g_clothes_ids", "unique_g_pids")]
    S, M = ss.score_mats["face"], ss.merge_score_mats["face"]
    with pytest.raises(ValueError, match="^n_boot: "):
        metrics.evaluate(S, M, *ids, ci=0.9, n_boot=10 ** 12)
    with pytest.raises(ValueError, match="^seed: "):
        fusion.fuse(ss, "bssf", seed=-1)
    with pytest.raises(ValueError, match="^n_points: "):
        metrics.dev_eval([1.0, 2.0], [0.0, 1.0], [1.0, 2.0], [0.0, 1.0], epc_points=10 ** 12)
    for dev in ("meta", 5):
        with pytest.raises(ValueError, match="^device: "):
            metrics.evaluate(S, M, *ids, device=dev)


def test_verify_epc_points_too_many(tmp_path, capsys):
    for n in ("d", "e"):
        (tmp_path / f"{n}g.txt").write_text("1\n2\n")
        (tmp_path / f"{n}i.txt").write_text("0\n0.5\n")
    _refused_unchanged(capsys, tmp_path, ["verify", "--dev", tmp_path / "dg.txt",
                                          tmp_path / "di.txt", "--eval", tmp_path / "eg.txt",
                                          tmp_path / "ei.txt", "--epc-points", str(10 ** 9)],
                       "--epc-points")


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_file_predict_and_erc_device_errors_are_named(tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    from qme_ext.qme.modules import QME
    from qme_ext.qme.train import predict
    ss = make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6, seed=1)
    save_scores(tmp_path / "a.h5", ss)
    with pytest.raises(ValueError, match="^device: "):
        metrics.evaluate_file(tmp_path / "a.h5", model="face", device=device)
    with pytest.raises(ValueError, match="^device: "):
        predict(QME(ss.models), None, ss, device=device)
    if device == "meta":
        with pytest.raises(ValueError, match="^scores: "):
            metrics.erc(torch.zeros(12, 24, device="meta"), ss.q_pids, ss.g_pids, np.ones(12))


def test_evaluate_distance_protocols_rank_like_the_similarities(tmp_path, capsys):
    """--distance reaches the multi-query and single-gallery-shot tables (they ranked the
    distances as similarities)."""
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    ss = make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6, seed=1)
    save_scores(tmp_path / "s.h5", ss)
    neg = ss.subset_models(ss.models)
    neg.score_mats = {m: -a for m, a in ss.score_mats.items()}
    neg.merge_score_mats = {m: -a for m, a in ss.merge_score_mats.items()}
    save_scores(tmp_path / "d.h5", neg)
    opts = ["--multi-query", "max", "--single-shot", "3"]
    want = _run_json(capsys, tmp_path, ["evaluate", tmp_path / "s.h5"] + opts)
    # in memory and out of core (issue 30's block path) alike
    for extra in ([], ["--max-memory", "4KB"]):
        got = _run_json(capsys, tmp_path,
                        ["evaluate", tmp_path / "d.h5", "--distance"] + opts + extra)
        for row in ss.models:
            for k in ("MQ_top1", "MQ_mAP", "SGS_top1", "SGS_mAP", "GR_top1"):
                assert got[row][k] == want[row][k], (row, k, extra)


def test_demo_bad_regime_creates_nothing(tmp_path, capsys):
    _refused_unchanged(capsys, tmp_path, ["demo", "--out", tmp_path / "out", "--regime", "x"],
                       "--regime")
    _refused_unchanged(capsys, tmp_path, ["demo", "--out", tmp_path / "out", "--seed", "-1"],
                       "--seed")  # was a numpy traceback after --out was created
    assert not (tmp_path / "out").exists()
