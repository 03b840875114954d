"""Embeddings in, metrics out (issue 21): metrics.evaluate_embeddings against
metrics.evaluate of the same matmul's matrices, bit for bit; the inputs a user holds
(numpy, torch, float16/bfloat16, .npy memory maps, HDF5 datasets); fusion per block;
bad input."""
import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics import embeddings as emb
from report_helpers import assert_same_report


def feature_problem(seed=0, P=30, G=90, D=12, n_ids=12, quantise=True):
    """Clustered features (ties when quantised) and the seven id vectors of evaluate()."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids + 3, D))
    g_pids = rng.integers(0, n_ids, G)
    g_pids[:n_ids] = np.arange(n_ids)  # every subject enrolled
    q_pids = rng.integers(0, n_ids + 3, P)  # some probes unenrolled
    g = centres[g_pids] + rng.normal(size=(G, D))
    q = centres[q_pids] + rng.normal(size=(P, D))
    if quantise:
        g, q = np.round(g * 2) / 2, np.round(q * 2) / 2
        q[0] = g[1]  # exact ties between a probe and gallery entries
        g[2] = g[1]
    ids = dict(q_pids=q_pids, q_camids=rng.integers(0, 3, P),
               q_clothes_ids=rng.integers(0, 2, P), g_pids=g_pids,
               g_camids=rng.integers(0, 3, G), g_clothes_ids=rng.integers(0, 2, G))
    return q.astype(np.float32), g.astype(np.float32), ids


def positional(ids, uniq):
    return (ids["q_pids"], ids["q_camids"], ids["q_clothes_ids"], ids["g_pids"],
            ids["g_camids"], ids["g_clothes_ids"], uniq)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(emb, "GALLERY_TILE", 16)  # several gallery tiles per block


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_report_is_evaluate_of_the_same_matmul(metric, small_tiles):
    q, g, ids = feature_problem()
    uniq = np.unique(ids["g_pids"])
    for block_rows in (7, 30):
        got = metrics.evaluate_embeddings(q, g, **ids, metric=metric, block_rows=block_rows)
        S, M = metrics.embedding_matrices(q, g, g_pids=ids["g_pids"], metric=metric,
                                          block_rows=block_rows)
        want = metrics.evaluate(S, M, *positional(ids, uniq),
                                larger_is_better=metric != "euclidean")
        assert_same_report(got, want)
    # the matrices are the textbook ones
    qt, gt = torch.from_numpy(q).double(), torch.from_numpy(g).double()
    rows = torch.nn.functional.normalize(gt, dim=1) if metric == "cosine" else gt
    templ = torch.stack([rows[torch.from_numpy(ids["g_pids"] == u)].mean(0) for u in uniq])
    if metric == "cosine":
        n = torch.nn.functional.normalize
        S_ref, M_ref = n(qt) @ n(gt).T, n(qt) @ n(templ).T
    elif metric == "dot":
        S_ref, M_ref = qt @ gt.T, qt @ templ.T
    else:
        S_ref, M_ref = torch.cdist(qt, gt), torch.cdist(qt, templ)
    np.testing.assert_allclose(S.double().numpy(), S_ref.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(M.double().numpy(), M_ref.numpy(), rtol=1e-5, atol=1e-4)


def test_distance_thresholds_in_distance_units():
    q, g, ids = feature_problem(1, quantise=False)
    rep = metrics.evaluate_embeddings(q, g, **ids, metric="euclidean", fars=[0.01])
    D = torch.cdist(torch.from_numpy(q).double(), torch.from_numpy(g).double()).numpy()
    gen = ids["q_pids"][:, None] == ids["g_pids"][None, :]
    t = rep["Threshold@1.00%FAR"]
    assert t > 0  # a distance, not a negated similarity
    # accepting d <= t gives the reported TAR (the float32 distances of the tiles)
    S, _ = metrics.embedding_matrices(q, g, g_pids=ids["g_pids"], metric="euclidean")
    S = S.numpy()
    assert rep["TAR@1.00%FAR"] == np.count_nonzero(S[gen] <= t) / gen.sum()
    assert np.count_nonzero(S[~gen] <= t) / (~gen).sum() >= 0.01
    np.testing.assert_allclose(S, D, rtol=1e-5, atol=1e-4)


def test_report_does_not_depend_on_the_budget(small_tiles, monkeypatch):
    monkeypatch.setattr(emb, "MATMUL_ROWS", 4)  # matmuls of 4 probe rows at fixed offsets
    q, g, ids = feature_problem(2)
    want = metrics.evaluate_embeddings(q, g, **ids, block_rows=4)
    seen, sources = [], []
    # a few rows of (G + S) float32 scores, candidates and tiles fit 24 KB at this size
    got = metrics.evaluate_embeddings(q, g, **ids, max_memory="24KB", source_out=sources,
                                      progress=lambda *a: seen.append(a))
    assert 4 < sources[0].block_rows < q.shape[0] and sources[0].block_rows % 4 == 0
    assert seen[-1][1:] == (q.shape[0], q.shape[0]) and seen[-1][0] == sources[0].walks
    assert_same_report(got, want)
    for block_rows in (9, 30):  # 8 and 28 rows per block
        assert_same_report(metrics.evaluate_embeddings(q, g, **ids, block_rows=block_rows),
                           want)
    assert sources[0].timing["matmul"] > 0
    with pytest.raises(ValueError, match="max_memory"):
        metrics.evaluate_embeddings(q, g, **ids, max_memory="1KB")
    with pytest.raises(ValueError, match="at most one"):
        metrics.evaluate_embeddings(q, g, **ids, max_memory="1MB", block_rows=3)


def test_bootstrap_intervals_match_evaluate():
    q, g, ids = feature_problem(3)
    boot = dict(ci=0.9, n_boot=30, boot_seed=2)
    for metric in ("cosine", "euclidean"):
        got = metrics.evaluate_embeddings(q, g, **ids, metric=metric, block_rows=11, **boot)
        S, M = metrics.embedding_matrices(q, g, g_pids=ids["g_pids"], metric=metric,
                                          block_rows=11)
        want = metrics.evaluate(S, M, *positional(ids, np.unique(ids["g_pids"])),
                                larger_is_better=metric != "euclidean", **boot)
        assert list(got) == list(want)
        for k in want:
            assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]), equal_nan=True), k


def test_given_templates_and_subjects():
    q, g, ids = feature_problem(4)
    uniq = np.unique(ids["g_pids"])
    templ = np.random.default_rng(0).normal(size=(uniq.size, q.shape[1])).astype(np.float32)
    got = metrics.evaluate_embeddings(q, g, **ids, unique_g_pids=uniq, gallery_templates=templ)
    S, _ = metrics.embedding_matrices(q, g, g_pids=ids["g_pids"])
    n = torch.nn.functional.normalize
    M = n(torch.from_numpy(q)) @ n(torch.from_numpy(templ)).T
    want = metrics.evaluate(S, M, *positional(ids, uniq))
    assert_same_report(got, want)
    with pytest.raises(ValueError, match="gallery_templates"):
        metrics.evaluate_embeddings(q, g, **ids, unique_g_pids=uniq, gallery_templates=templ[1:])
    with pytest.raises(ValueError, match="unique_g_pids.*no gallery entry"):
        metrics.evaluate_embeddings(q, g, **ids, unique_g_pids=np.append(uniq, 999))
    with pytest.raises(ValueError, match="ascending"):
        metrics.evaluate_embeddings(q, g, **ids, unique_g_pids=uniq[::-1].copy())


def test_inputs_a_user_holds(tmp_path, small_tiles):
    h5py = pytest.importorskip("h5py")
    q, g, ids = feature_problem(5)
    want = metrics.evaluate_embeddings(q, g, **ids)
    np.save(tmp_path / "g.npy", g)
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    assert_same_report(metrics.evaluate_embeddings(q, mm, **ids), want)
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        fh["probe"], fh["gallery"] = q, g
    with h5py.File(tmp_path / "f.h5", "r") as fh:
        assert_same_report(metrics.evaluate_embeddings(fh["probe"], fh["gallery"], **ids), want)
    tq, tg = torch.from_numpy(q), torch.from_numpy(g)
    assert_same_report(metrics.evaluate_embeddings(tq, tg, **ids), want)
    assert_same_report(metrics.evaluate_embeddings(q, g.T.copy().T, **ids), want)  # strides
    # half precision: exactly the float32 report of the rounded features
    for t in (torch.float16, torch.bfloat16):
        hq, hg = tq.to(t), tg.to(t)
        assert_same_report(metrics.evaluate_embeddings(hq, hg, **ids),
                           metrics.evaluate_embeddings(hq.float(), hg.float(), **ids))
    assert_same_report(metrics.evaluate_embeddings(q.astype(np.float16), g.astype(np.float16),
                                                   **ids),
                       metrics.evaluate_embeddings(q.astype(np.float16).astype(np.float32),
                                                   g.astype(np.float16).astype(np.float32),
                                                   **ids))
    # inputs are never modified
    q0, g0 = q.copy(), g.copy()
    metrics.evaluate_embeddings(q, g, **ids, metric="euclidean")
    assert np.array_equal(q, q0) and np.array_equal(g, g0)


def test_bad_input_is_named():
    q, g, ids = feature_problem(6)
    with pytest.raises(ValueError, match="gallery_feats: expected 12 features"):
        metrics.evaluate_embeddings(q, g[:, :5], **ids)
    bad = g.copy()
    bad[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"gallery_feats: 2 row\(s\) with non-finite.*row 3"):
        metrics.evaluate_embeddings(q, bad, **ids)
    bad = q.copy()
    bad[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"probe_feats: 1 row\(s\) with non-finite.*row 4"):
        metrics.evaluate_embeddings(bad, g, **ids, metric="dot")
    zero = g.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match=r"gallery_feats: 1 row\(s\) with zero norm.*row 5"):
        metrics.evaluate_embeddings(q, zero, **ids)
    metrics.evaluate_embeddings(q, zero, **ids, metric="dot")  # defined under dot
    with pytest.raises(ValueError, match="metric"):
        metrics.evaluate_embeddings(q, g, **ids, metric="manhattan")
    with pytest.raises(TypeError, match="probe_feats.*float"):
        metrics.evaluate_embeddings(q.astype(np.int32), g, **ids)
    with pytest.raises(ValueError, match="probe_feats.*2-D"):
        metrics.evaluate_embeddings(q[None], g, **ids)
    with pytest.raises(TypeError, match="gallery_feats"):
        metrics.evaluate_embeddings(q, g.tolist(), **ids)
    with pytest.raises(ValueError, match="g_pids"):
        metrics.evaluate_embeddings(q, g, **{**ids, "g_pids": ids["g_pids"][1:]})
    with pytest.raises(ValueError, match="q_pids"):
        metrics.evaluate_embeddings(q, g, **{**ids, "q_pids": ids["q_pids"][1:]})


def test_fitted_fusion_per_block():
    from qme_ext.fusion import fit_fusion, apply_fusion
    from qme_ext.io import ScoreSet
    q, g, ids = feature_problem(7)
    q2, g2, _ = feature_problem(8, D=6)
    q2, g2 = q2[:q.shape[0]], g2[:g.shape[0]]
    uniq = np.unique(ids["g_pids"])
    feats_q, feats_g = {"a": q, "b": q2}, {"a": g, "b": g2}
    mats = {n: metrics.embedding_matrices(feats_q[n], feats_g[n], g_pids=ids["g_pids"])
            for n in ("a", "b")}
    full = ScoreSet(models=["a", "b"], score_mats={n: m[0].numpy() for n, m in mats.items()},
                    merge_score_mats={n: m[1].numpy() for n, m in mats.items()}, quality={},
                    q_pids=ids["q_pids"], q_camids=ids["q_camids"],
                    q_clothes_ids=ids["q_clothes_ids"], g_pids=ids["g_pids"],
                    g_camids=ids["g_camids"], g_clothes_ids=ids["g_clothes_ids"],
                    unique_g_pids=uniq)
    result = fit_fusion("zscore", full, ["a", "b"])  # a calibration set: these very scores
    fused = apply_fusion(result, full, "f")
    want = metrics.evaluate(fused.score_mats["f"], fused.merge_score_mats["f"],
                            *positional(ids, uniq))
    got = metrics.evaluate_embeddings(feats_q, feats_g, **ids, fusion=result, block_rows=9)
    assert_same_report(got, want)
    with pytest.raises(ValueError, match="fusion"):
        metrics.evaluate_embeddings(feats_q, feats_g, **ids)
    with pytest.raises(ValueError, match="fusion combines similarities"):
        metrics.evaluate_embeddings(feats_q, feats_g, **ids, fusion=result, metric="euclidean")


def test_qme_model_per_block():
    from qme_ext.qme import QME
    q, g, ids = feature_problem(9)
    q2, g2, _ = feature_problem(10, D=6)
    q2, g2 = q2[:q.shape[0]], g2[:g.shape[0]]
    uniq = np.unique(ids["g_pids"])
    torch.manual_seed(0)
    model = QME(["a", "b"], num_experts=2, dropout=0.0).eval()
    quality = np.random.default_rng(1).random(q.shape[0]).astype(np.float32)
    feats_q, feats_g = {"a": q, "b": q2}, {"a": g, "b": g2}
    mats = [metrics.embedding_matrices(feats_q[n], feats_g[n], g_pids=ids["g_pids"], block_rows=9)
            for n in ("a", "b")]
    qt = torch.from_numpy(quality)
    with torch.no_grad():
        S = torch.cat([model(torch.stack([m[0][r:r + 9] for m in mats], 1), qt[r:r + 9])
                       for r in range(0, q.shape[0], 9)])
        M = torch.cat([model(torch.stack([m[1][r:r + 9] for m in mats], 1), qt[r:r + 9])
                       for r in range(0, q.shape[0], 9)])
    want = metrics.evaluate(S, M, *positional(ids, uniq))
    got = metrics.evaluate_embeddings(feats_q, feats_g, **ids, fusion=model, quality=quality,
                                      block_rows=9)
    assert_same_report(got, want)
