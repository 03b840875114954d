"""``qme-ext train / fuse / evaluate / demo --quick`` as subprocesses, at tiny size."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from qme_ext.datasets.synthetic import synthetic_wholebody
from qme_ext.io import load_scores, save_scores

def _run(*argv, timeout=120):
    cmd = [sys.executable, "-m", "qme_ext", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qme_cli")
    data = synthetic_wholebody("mixed", seed=5, num_subjects=20, num_train_subjects=25,
                               num_val_subjects=15, num_unknown=4)
    paths = {}
    for split in ("train", "val", "test"):
        paths[split] = str(d / f"{split}.h5")
        save_scores(paths[split], data[split])
    paths["dir"] = d
    return paths


@pytest.fixture(scope="module")
def trained(files):
    out = str(files["dir"] / "model.pt")
    r = _run("train", files["train"], "--val", files["val"], "--quality", "face", "--out", out,
             "--steps", "60", "--qe-steps", "40", "--eval-every", "30", "--seed", "3",
             "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_train_fuse_evaluate(files, trained):
    fused = str(files["dir"] / "fused.h5")
    r = _run("fuse", trained, files["test"], "--out", fused, "--quiet")
    assert r.returncode == 0, r.stderr
    ss = load_scores(fused)
    assert ss.models == ["face", "body", "gait", "qme"]
    test = load_scores(files["test"])
    assert ss.score_mats["qme"].shape == test.score_mats["face"].shape
    assert ss.merge_score_mats["qme"].shape == test.merge_score_mats["face"].shape
    assert np.isfinite(ss.score_mats["qme"]).all()
    with h5py.File(fused, "r") as f:  # the copy keeps the original quality group
        assert f["quality/face"].shape == test.quality["face"].shape
    js = str(files["dir"] / "eval.json")
    r = _run("evaluate", fused, "--json", js, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "qme" in r.stdout
    res = json.load(open(js))
    assert 0.0 <= res["qme"]["GR_top1"] <= 1.0


def test_train_writes_its_cv_selection_and_fuse_scores_with_the_predictor(files, trained):
    """Issue 26: the checkpoint holds the cross-validated predictor and every candidate's
    per-fold criteria; ``fuse`` writes exactly that predictor's scores."""
    from qme_ext.qme.checkpoint import load_checkpoint
    from qme_ext.qme.checkpoint import load_predictor
    _, _, meta = load_checkpoint(trained)
    sel = meta["extra"]["selection"]
    assert sel["folds"] == 3 and sel["chosen"] in sel["candidates"]
    assert "qme:qme" in sel["candidates"] and "fusion:rhe" in sel["candidates"]
    for c in sel["candidates"].values():
        assert len(c["folds"]) == 3 and np.isclose(c["mean"], np.mean(c["folds"]))
    assert meta["extra"]["predictor"]["kind"] in ("qme", "fusion", "model", "ensemble")
    fused = str(files["dir"] / "fused_pred.h5")
    r = _run("fuse", trained, files["test"], "--out", fused, "--quiet")
    assert r.returncode == 0, r.stderr
    S, M = load_predictor(trained).fuse_block(load_scores(files["test"]))
    got = load_scores(fused)
    np.testing.assert_array_equal(got.score_mats["qme"], S)
    np.testing.assert_array_equal(got.merge_score_mats["qme"], M)


def _train(files, train_path, out, seed="3"):
    r = _run("train", train_path, "--val", files["val"], "--quality", "face", "--out", out,
             "--steps", "60", "--qe-steps", "40", "--eval-every", "30", "--seed", seed,
             "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_train_file_without_merge_matrices_or_unique_g_pids(files, tmp_path):
    """docs/definitions.rst, §1: a training file needs neither; subjects come from g_pids."""
    bare = str(tmp_path / "train_bare.h5")
    save_scores(bare, load_scores(files["train"]))
    with h5py.File(bare, "a") as f:
        del f["unique_g_pids"]
        assert not any("merge_score_mat" in f[m] for m in ("face", "body", "gait"))
    _train(files, bare, str(tmp_path / "m.pt"))


def test_training_is_deterministic(files, trained, tmp_path):
    """Same data, seed and recipe: the same checkpoint weights and the same fused file."""
    import torch
    again = _train(files, files["train"], str(tmp_path / "again.pt"))
    a, b = (torch.load(p, weights_only=True) for p in (trained, again))
    for key in ("qme_state", "qe_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    fused = []
    for i, ckpt in enumerate((trained, again)):
        out = str(tmp_path / f"fused{i}.h5")
        r = _run("fuse", ckpt, files["test"], "--out", out, "--quiet")
        assert r.returncode == 0, r.stderr
        fused.append(load_scores(out))
    for key in ("score_mats", "merge_score_mats"):
        np.testing.assert_array_equal(getattr(fused[0], key)["qme"],
                                      getattr(fused[1], key)["qme"])


def test_evaluate_fused_file_against_calibrated_baselines(files, trained, tmp_path):
    """One command compares QME with baselines calibrated on the training file, which does
    not hold the fused 'qme' model: the baselines fuse the models it holds, 'qme' is a row of
    its own, and the baseline rows equal those of the unfused test file (CLI and Python)."""
    from qme_ext.fusion import fuse
    fused = str(tmp_path / "fused.h5")
    r = _run("fuse", trained, files["test"], "--out", fused, "--quiet")
    assert r.returncode == 0, r.stderr
    rows = {}
    for name, path in (("fused", fused), ("test", files["test"])):
        js = str(tmp_path / f"{name}.json")
        r = _run("evaluate", path, "--fusion", "zscore,weighted", "--calibration",
                 files["train"], "--json", js, "--quiet")
        assert r.returncode == 0, r.stderr
        rows[name] = json.load(open(js))
    assert set(rows["fused"]) == {"face", "body", "gait", "qme", "zscore", "weighted"}
    for row in ("zscore", "weighted", "face"):
        assert rows["fused"][row] == rows["test"][row], row
    train = load_scores(files["train"])
    with_qme = fuse(load_scores(fused), "zscore", calibration=train, name="z")
    plain = fuse(load_scores(files["test"]), "zscore", calibration=train, name="z")
    np.testing.assert_array_equal(with_qme.score_mats["z"], plain.score_mats["z"])
    np.testing.assert_array_equal(with_qme.merge_score_mats["z"], plain.merge_score_mats["z"])


def test_fuse_rejects_other_model_order(files, trained):
    other = str(files["dir"] / "reordered.h5")
    save_scores(other, load_scores(files["test"], models="body,face,gait"))
    out = str(files["dir"] / "bad.h5")
    r = _run("fuse", trained, other, "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "differ" in lines[0] and "Traceback" not in r.stderr
    assert not os.path.exists(out)


def test_train_user_errors(files, tmp_path):
    r = _run("train", files["train"], "--val", files["val"], "--quality", "nope",
             "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 2 and "quality/nope" in r.stderr
    r = _run("fuse", str(tmp_path / "missing.pt"), files["test"], "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no such checkpoint" in r.stderr


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    r = _run("demo", "--quick", "--out", str(out), "--regime", "face_poor", "--quiet",
             timeout=170)
    assert r.returncode == 0, r.stderr
    for row in ("face", "body", "gait", "zscore", "bssf", "qme", "qme_z1", "qme_noqe"):
        assert row in r.stdout
    res = json.load(open(out / "results.json"))
    assert set(res["overall"]) >= {"qme", "zscore", "qme_z1", "qme_noqe"}
    try:
        import matplotlib  # noqa: F401  (a test extra: the plots need it)
    except ImportError:
        assert "matplotlib" in r.stderr  # the demo says why it wrote no plots
        return
    assert (out / "quality_vs_face_rank.png").exists()
    assert (out / "score_hist_qme.png").exists()
