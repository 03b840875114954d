"""``qme-ext evaluate-embeddings`` (issue 21): HDF5, .npz and .npy-directory inputs give the
report of metrics.evaluate_embeddings; JSON, plots, progress bar, user errors; and
``qme-ext evaluate --distance`` / ``verify --distance``."""
import json

import numpy as np
import pytest

from qme_ext import cli, metrics
from qme_ext.cli import embeddings as cli_embeddings
from test_embeddings import feature_problem

KEYS = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids")


@pytest.fixture
def problem():
    q, g, ids = feature_problem(12)
    return q, g, ids, metrics.evaluate_embeddings(q, g, **ids)


def _same_json(path, row, want):
    got = json.load(open(path))[row]
    for k, v in want.items():
        assert got[k] == (v if np.isfinite(v) else None), k


def test_hdf5_npz_and_npy_directory(problem, tmp_path, capsys):
    h5py = pytest.importorskip("h5py")
    q, g, ids, want = problem
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        fh["probe_feats"], fh["gallery_feats"] = q.astype(np.float16), g.astype(np.float16)
        for k in KEYS:
            fh[k] = ids[k].astype(np.float64)  # ids stored as floats, as docs/definitions.rst, §1 allows
    np.savez(tmp_path / "f.npz", probe_feats=q, gallery_feats=g, **ids)
    (tmp_path / "d").mkdir()
    for k, v in dict(probe_feats=q, gallery_feats=g, **ids).items():
        np.save(tmp_path / "d" / f"{k}.npy", v)
    want16 = metrics.evaluate_embeddings(q.astype(np.float16), g.astype(np.float16), **ids)
    for path, rep in ((tmp_path / "f.h5", want16), (tmp_path / "f.npz", want),
                      (tmp_path / "d", want)):
        out = tmp_path / "out.json"
        assert cli.main(["evaluate-embeddings", str(path), "--json", str(out), "--quiet",
                         "--name", "m", "--max-memory", "1MB"]) == 0
        _same_json(out, "m", rep)
        assert "Rank-1" in capsys.readouterr().out


def test_euclidean_ci_plots_and_progress_bar(problem, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    q, g, ids, _ = problem
    np.savez(tmp_path / "f.npz", probe_feats=q, gallery_feats=g, **ids)
    monkeypatch.setattr(cli_embeddings, "BAR_AFTER_S", 0.0)  # show the bar at once
    out = tmp_path / "out.json"
    assert cli.main(["evaluate-embeddings", str(tmp_path / "f.npz"), "--metric", "euclidean",
                     "--ci", "0.9", "--n-boot", "20", "--json", str(out), "--plots",
                     str(tmp_path / "plots")]) == 0
    want = metrics.evaluate_embeddings(q, g, **ids, metric="euclidean", ci=0.9, n_boot=20)
    got = json.load(open(out))["f"]
    assert got["Threshold@1.00%FAR"] == want["Threshold@1.00%FAR"] > 0
    assert got["GR_mAP_ci"] == list(want["GR_mAP_ci"])
    err = capsys.readouterr().err
    assert "pass 1 [" in err and f"{q.shape[0]}/{q.shape[0]} probes" in err
    assert (tmp_path / "plots" / "roc.png").exists() and (tmp_path / "plots" / "cmc.png").exists()


def test_missing_camera_and_clothes_ids_default(problem, tmp_path):
    q, g, ids, _ = problem
    np.savez(tmp_path / "f.npz", probe_feats=q, gallery_feats=g, q_pids=ids["q_pids"],
             g_pids=ids["g_pids"])
    out = tmp_path / "out.json"
    assert cli.main(["evaluate-embeddings", str(tmp_path / "f.npz"), "--json", str(out),
                     "--quiet"]) == 0
    P, G = q.shape[0], g.shape[0]
    want = metrics.evaluate_embeddings(
        q, g, q_pids=ids["q_pids"], g_pids=ids["g_pids"], q_camids=np.zeros(P, int),
        g_camids=np.ones(G, int), q_clothes_ids=np.zeros(P, int),
        g_clothes_ids=np.zeros(G, int))
    _same_json(out, "f", want)


def test_user_errors(problem, tmp_path, capsys):
    q, g, ids, _ = problem
    np.savez(tmp_path / "bad.npz", probe_feats=q, gallery_feats=g[:, :4], **ids)
    np.savez(tmp_path / "noids.npz", probe_feats=q, gallery_feats=g)
    for args, msg in (([str(tmp_path / "bad.npz")], "gallery_feats: expected 12 features"),
                      ([str(tmp_path / "noids.npz")], "missing 'q_pids'"),
                      ([str(tmp_path / "nope.npz")], "No such file"),
                      ([str(tmp_path / "bad.npz"), "--max-memory", "lots"], "--max-memory"),
                      ([str(tmp_path / "bad.npz"), "--device", "tpu"], "--device")):
        assert cli.main(["evaluate-embeddings", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("qme-ext: error:") and msg in err, err


def test_evaluate_and_verify_distance_flags(tmp_path, capsys):
    from qme_ext.io import ScoreSet, save_scores
    from report_helpers import evaluation_inputs
    S, M, ids = evaluation_inputs(5, nan_frac=0.0)
    D, DM = np.abs(S) * 3, np.abs(M) * 3
    names = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids",
             "unique_g_pids")
    save_scores(tmp_path / "d.h5", ScoreSet(models=["reid"], score_mats={"reid": D},
                                           merge_score_mats={"reid": DM}, quality={},
                                           **dict(zip(names, ids))))
    want = metrics.evaluate(D, DM, *ids, larger_is_better=False)
    for extra in ([], ["--max-memory", "64KB"]):
        out = tmp_path / "o.json"
        assert cli.main(["evaluate", str(tmp_path / "d.h5"), "--distance", "--quiet",
                         "--json", str(out), *extra]) == 0
        _same_json(out, "reid", want)
    assert cli.main(["evaluate", str(tmp_path / "d.h5"), "--distance", "--fusion",
                     "zscore"]) == 2
    assert "--distance" in capsys.readouterr().err
    gen, imp = np.abs(S[:, :5]).ravel() * 0.5, np.abs(S[:, 5:]).ravel() * 2
    np.savez(tmp_path / "v.npz", genuine=gen, impostor=imp)
    out = tmp_path / "v.json"
    assert cli.main(["verify", str(tmp_path / "v.npz"), "--distance", "--quiet", "--json",
                     str(out)]) == 0
    got = next(iter(json.load(open(out)).values()))
    want = metrics.verification(gen, imp, larger_is_better=False)
    assert got["EER"] == want.eer and got["EER_threshold"] == want.eer_threshold
