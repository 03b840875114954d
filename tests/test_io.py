"""HDF5 score files: round trip, layout rules, errors naming file/key/shapes, atomic writes."""
import os

import h5py
import numpy as np
import pytest

from qme_ext.datasets import make_example_scoreset
from qme_ext.io import ScoreFileError, ScoreSet, iter_row_blocks, load_scores, save_scores


@pytest.fixture(scope="module")
def scores():
    return make_example_scoreset(num_probes=12, num_gallery=30, num_subjects=5, seed=3)


@pytest.fixture
def path(tmp_path, scores):
    p = tmp_path / "scores.h5"
    save_scores(p, scores)
    return p


def _assert_same(a: ScoreSet, b: ScoreSet):
    assert a.models == b.models
    for m in a.models:
        assert a.score_mats[m].dtype == b.score_mats[m].dtype == np.float32
        np.testing.assert_array_equal(a.score_mats[m], b.score_mats[m])
    assert set(a.merge_score_mats) == set(b.merge_score_mats)
    for m in a.merge_score_mats:
        np.testing.assert_array_equal(a.merge_score_mats[m], b.merge_score_mats[m])
    for k, v in a.ids().items():
        assert b.ids()[k].dtype == np.int64
        np.testing.assert_array_equal(v, b.ids()[k])
    assert set(a.quality) == set(b.quality)
    for k in a.quality:
        np.testing.assert_array_equal(a.quality[k], b.quality[k])


def test_round_trip_exact(path, scores):
    loaded = load_scores(path)
    _assert_same(scores, loaded)
    assert loaded.num_probes == 12 and loaded.num_gallery == 30
    with h5py.File(path, "r") as f:
        assert f.attrs["models"] == "face,body,gait"
        assert f["face/score_mat"].shape == (12, 30)
        assert f["quality/face_weights"].shape == (12, 1)


def test_model_order_without_attribute_is_sorted(path):
    with h5py.File(path, "a") as f:
        del f.attrs["models"]
    assert load_scores(path).models == ["body", "face", "gait"]


def test_models_argument_and_subset(path, scores):
    loaded = load_scores(path, models="gait,face")
    assert loaded.models == ["gait", "face"]
    _assert_same(scores.subset_models(["gait", "face"]), loaded)


@pytest.mark.parametrize("rows", [slice(2, 9), slice(None, None, 3), [7, 1, 1, 11], np.arange(12) % 2 == 0])
def test_rows(path, scores, rows):
    loaded = load_scores(path, rows=rows)
    idx = np.arange(12)[rows]
    np.testing.assert_array_equal(loaded.score_mats["body"], scores.score_mats["body"][idx])
    np.testing.assert_array_equal(loaded.merge_score_mats["gait"], scores.merge_score_mats["gait"][idx])
    np.testing.assert_array_equal(loaded.q_pids, scores.q_pids[idx])
    np.testing.assert_array_equal(loaded.quality["face"], scores.quality["face"][idx])
    np.testing.assert_array_equal(loaded.g_pids, scores.g_pids)


def test_iter_row_blocks(path, scores):
    blocks = list(iter_row_blocks(path, "face", 5))
    assert [b[0] for b in blocks] == [slice(0, 5), slice(5, 10), slice(10, 12)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), scores.score_mats["face"])
    with pytest.raises(ScoreFileError, match="nope/score_mat"):
        list(iter_row_blocks(path, "nope", 5))


def test_float_ids_cast_when_integral(path, scores):
    with h5py.File(path, "a") as f:
        data = f["g_pids"][...].astype(np.float64)
        del f["g_pids"]
        f["g_pids"] = data
    loaded = load_scores(path)
    assert loaded.g_pids.dtype == np.int64
    np.testing.assert_array_equal(loaded.g_pids, scores.g_pids)


@pytest.mark.parametrize("bad", [np.nan, 2.5, np.inf])
def test_non_integral_ids_rejected(path, bad):
    with h5py.File(path, "a") as f:
        data = f["q_camids"][...].astype(np.float32)
        data[3] = bad
        del f["q_camids"]
        f["q_camids"] = data
    with pytest.raises(ScoreFileError, match="q_camids") as err:
        load_scores(path)
    assert str(path) in str(err.value)


def _mutate(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize("key", ["g_camids", "unique_g_pids", "q_pids"])
def test_missing_key(path, key):
    _mutate(path, lambda f: f.__delitem__(key))
    with pytest.raises(ScoreFileError, match=f"missing key '{key}'") as err:
        load_scores(path)
    assert str(path) in str(err.value)


def test_missing_score_mat_of_listed_model(path):
    _mutate(path, lambda f: f.__delitem__("body/score_mat"))
    with pytest.raises(ScoreFileError, match="body/score_mat"):
        load_scores(path)


def _replace(f, key, data):
    del f[key]
    f[key] = data


@pytest.mark.parametrize("key, make, shape_text", [
    ("q_clothes_ids", lambda: np.zeros(11, np.int64), "(11,)"),
    ("g_camids", lambda: np.zeros(29, np.int64), "(29,)"),
    ("face/score_mat", lambda: np.zeros((12, 29), np.float32), "(12, 29)"),
    ("gait/merge_score_mat", lambda: np.zeros((12, 4), np.float32), "(12, 4)"),
    ("quality/face_weights", lambda: np.zeros((12, 2), np.float32), "(12, 2)"),
    ("quality/face", lambda: np.zeros((10, 8), np.float32), "(10, 8)"),
])
def test_length_mismatch_names_key_and_shapes(path, key, make, shape_text):
    _mutate(path, lambda f: _replace(f, key, make()))
    with pytest.raises(ScoreFileError) as err:
        load_scores(path)
    msg = str(err.value)
    assert key in msg and shape_text in msg and str(path) in msg


def test_missing_file_and_not_hdf5(tmp_path):
    with pytest.raises(ScoreFileError, match="no such file"):
        load_scores(tmp_path / "absent.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ScoreFileError, match="not an HDF5 file"):
        load_scores(bad)
    assert issubclass(ScoreFileError, ValueError)


def test_unknown_model(path):
    with pytest.raises(ScoreFileError, match="xx/score_mat"):
        load_scores(path, models=["face", "xx"])


def test_with_model_and_validate(scores):
    fused = scores.with_model("fused", scores.score_mats["face"] * 2, scores.merge_score_mats["face"])
    assert fused.models == ["face", "body", "gait", "fused"]
    assert scores.models == ["face", "body", "gait"]  # original untouched
    with pytest.raises(ValueError, match="already exists"):
        fused.with_model("fused", scores.score_mats["face"])
    with pytest.raises(ValueError, match=r"x/score_mat.*\(12, 3\)"):
        scores.with_model("x", np.zeros((12, 3)))
    with pytest.raises(ValueError, match="unknown model"):
        scores.subset_models(["nope"])


def test_atomic_write(tmp_path, scores, monkeypatch):
    target = tmp_path / "out.h5"
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        save_scores(target, scores)
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # temporary file cleaned up

    # an existing file survives a failed overwrite unchanged
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    save_scores(target, scores.subset_models(["face"]))
    calls["n"] = 0
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError):
        save_scores(target, scores)
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    assert load_scores(target).models == ["face"]
    assert os.listdir(tmp_path) == ["out.h5"]


def test_training_file_needs_no_unique_g_pids(path, scores):
    """docs/definitions.rst, §1: a training file has no merge matrices and need not store unique_g_pids."""
    def strip(f):
        del f["unique_g_pids"]
        for m in scores.models:
            del f[f"{m}/merge_score_mat"]
    _mutate(path, strip)
    ss = load_scores(path)
    np.testing.assert_array_equal(ss.unique_g_pids, np.unique(scores.g_pids))
    assert ss.merge_score_mats == {}
    from qme_ext.io import load_ids
    _, ids, _ = load_ids(path)
    np.testing.assert_array_equal(ids["unique_g_pids"], np.unique(scores.g_pids))


def test_merge_matrix_without_unique_g_pids_names_the_column_order(path, scores):
    _mutate(path, lambda f: f.__delitem__("unique_g_pids"))
    with pytest.raises(ScoreFileError, match="missing key 'unique_g_pids' .*merge_score_mat"):
        load_scores(path)
