"""Issue 23 (part B): bad values give one line and exit 2 (CLI) or a named ValueError
(API), in memory and out of core alike, never a traceback and never a confident wrong
number; checkpoints are checked against their schema; the API takes what torch users pass.

The CLI runs in process (``cli.main``): an uncaught exception fails the test, so "no
traceback" is asserted by construction; the files a command reads stay byte-identical.
"""
import copy
import hashlib
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from qme_ext import cli, metrics
from qme_ext.datasets import make_example_scoreset
from qme_ext.fusion import fuse
from qme_ext.io import ScoreFileError, load_scores, save_scores
from qme_ext.metrics.streaming import evaluate_file
from qme_ext.qme.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from qme_ext.qme.finite import NonFiniteWeightsError

SIZE = dict(num_probes=24, num_gallery=36, num_subjects=6, seed=3)
IDS = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids",
       "unique_g_pids")
OUT_OF_CORE = ((), ("--max-memory", "1GB"))  # in memory, out of core


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run(capsys, *argv):
    """(exit status, stdout, stderr lines) of ``qme-ext argv`` run in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def assert_user_error(result, needle: str) -> str:
    code, _, lines = result
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("qme-ext: error: "), lines
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def example():
    return make_example_scoreset(**SIZE)


@pytest.fixture(scope="module")
def files(tmp_path_factory, example):
    """{variant: path} of small score files, each with one problem."""
    d = tmp_path_factory.mktemp("bad_values")
    base = d / "ex.h5"
    save_scores(base, example)
    ss, u = example, example.unique_g_pids

    def rep(f, key, value):
        del f[key]
        f.create_dataset(key, data=value)

    def shrink(f, rows=None, cols=None):  # every matrix (and id vector) to rows x cols
        if rows is not None:
            for k in IDS[:3]:
                rep(f, k, np.asarray(f[k])[:rows])
            for k in f["quality"]:
                rep(f, f"quality/{k}", np.asarray(f[f"quality/{k}"])[:rows])
        if cols is not None:
            for k in IDS[3:]:
                rep(f, k, np.asarray(f[k])[:cols])
        for m in ss.models:
            for key in ("score_mat", "merge_score_mat"):
                a = np.asarray(f[f"{m}/{key}"])
                rep(f, f"{m}/{key}", a[:rows, :cols])

    def one_by_one(f):
        shrink(f, 1, 1)
        for k in IDS:
            rep(f, k, np.array([7]))

    def nan_model(f, models):
        for m in models:
            for key in ("score_mat", "merge_score_mat"):
                rep(f, f"{m}/{key}", np.full(f[f"{m}/{key}"].shape, np.nan, np.float32))

    variants = {
        "dup_unique": lambda f: rep(f, "unique_g_pids", np.r_[u[:-1], u[0]]),
        "mismatched_unique": lambda f: rep(f, "unique_g_pids", u + 1000),
        "zero_probes": lambda f: shrink(f, rows=0),
        "zero_gallery": lambda f: shrink(f, cols=0),
        "one_by_one": one_by_one,
        "no_mated": lambda f: rep(f, "q_pids", ss.q_pids + 10_000),
        "all_nan": lambda f: nan_model(f, ss.models),
        "face_nan": lambda f: nan_model(f, ["face"]),
        "big_float64": lambda f: rep(f, "face/score_mat",
                                     ss.score_mats["face"].astype(np.float64) * 1e300),
        "uint64_ids": lambda f: [rep(f, k, ss.ids()[k].astype(np.uint64) + np.uint64(2 ** 63))
                                 for k in ("q_pids", "g_pids", "unique_g_pids")],
        "float_ids_1e19": lambda f: [rep(f, k, ss.ids()[k] * 1e19 + 1e19)
                                     for k in ("q_pids", "g_pids", "unique_g_pids")],
    }
    out = {"ex": base}
    for name, edit in variants.items():
        path = d / f"{name}.h5"
        shutil.copyfile(base, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        out[name] = path
    return out


# (variant, what the one line says) -- the same in memory and out of core
FILE_ERRORS = [
    ("dup_unique", "unique_g_pids: duplicate subject ids"),
    ("mismatched_unique", "unique_g_pids: no merge_score_mat column for 6 gallery subject"),
    ("zero_probes", "q_pids: no probe"),
    ("zero_gallery", "g_pids: empty gallery"),
    ("one_by_one", "no impostor pair"),
    ("no_mated", "no mated probe"),
    ("all_nan", "score_mat: no finite score"),
    ("face_nan", "'face': score_mat: no finite score"),
    ("big_float64", "beyond float32's range"),
    ("uint64_ids", "beyond int64"),
    ("float_ids_1e19", "beyond int64"),
]


@pytest.mark.parametrize("memory", OUT_OF_CORE)
@pytest.mark.parametrize("variant,needle", FILE_ERRORS)
def test_evaluate_bad_file_is_one_line(capsys, files, variant, needle, memory):
    before = _digest(files[variant])
    line = assert_user_error(run(capsys, "evaluate", files[variant], "--quiet", *memory), needle)
    assert "Traceback" not in line
    assert _digest(files[variant]) == before


@pytest.mark.parametrize("memory", OUT_OF_CORE)
@pytest.mark.parametrize("seed", ["-1", str(2 ** 32), "-5"])
def test_evaluate_seed_out_of_range(capsys, files, seed, memory):
    assert_user_error(run(capsys, "evaluate", files["ex"], "--quiet", "--seed", seed, *memory),
                      f"--seed: expected an integer in [0, 2**32 - 1], got {int(seed)}")


def test_evaluate_largest_seed_is_accepted(capsys, files):
    code, out, _ = run(capsys, "evaluate", files["ex"], "--quiet", "--models", "face",
                       "--seed", str(2 ** 32 - 1))
    assert code == 0 and out.startswith("Row")


@pytest.mark.parametrize("variant,needle", [v for v in FILE_ERRORS
                                            if v[0] not in ("big_float64", "uint64_ids",
                                                            "float_ids_1e19")])
def test_api_in_memory_and_out_of_core_raise_the_same(files, variant, needle):
    """One validation: metrics.evaluate and metrics.evaluate_file raise the same ValueError."""
    needle = needle.replace("'face': ", "")
    with pytest.raises(ValueError, match=needle):
        evaluate_file(files[variant], "face", max_memory="1GB")
    ss = load_scores(files[variant])
    if variant.startswith("zero_"):  # the matrix check comes first: "score_mat: empty"
        needle = "empty matrix"
    with pytest.raises(ValueError, match=needle):
        metrics.evaluate(ss.score_mats["face"], ss.merge_score_mats["face"],
                         *[getattr(ss, k) for k in IDS])


def test_api_seed_and_unreadable_ids(files):
    ss = load_scores(files["ex"])
    args = [ss.score_mats["face"], ss.merge_score_mats["face"], *[getattr(ss, k) for k in IDS]]
    for seed in (-1, 2 ** 32, 1.5, "45"):
        with pytest.raises(ValueError, match="seed: expected an integer"):
            metrics.evaluate(*args, seed=seed)
        with pytest.raises(ValueError, match="seed: expected an integer"):
            evaluate_file(files["ex"], "face", seed=seed)
    for bad in (np.full(ss.num_probes, 2 ** 63, np.uint64), np.full(ss.num_probes, 1e19),
                torch.full((ss.num_probes,), -1e19, dtype=torch.float64)):
        with pytest.raises(ValueError, match="q_pids: id .* beyond int64"):
            metrics.rank_metrics(ss.score_mats["face"], bad, ss.g_pids)
    with pytest.raises(ScoreFileError, match="beyond int64"):
        load_scores(files["uint64_ids"])
    # the largest int64 and an exactly integral float id still work
    edge = np.full(ss.num_probes, 2 ** 63 - 1, np.uint64)
    assert metrics.rank_metrics(ss.score_mats["face"], edge, ss.g_pids).num_valid == 0


@pytest.mark.parametrize("bad", [np.full((4, 5), np.nan), np.full((4, 5), np.inf),
                                 np.where(np.eye(4, 5) > 0, -np.inf, np.nan)])
def test_no_finite_score_is_a_named_error_in_every_metric(bad):
    """All NaN used to give TAR@0.01%FAR = 100.00 and FNMR = 0.00."""
    S = bad.astype(np.float32)
    q, g = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3, 4])
    for call in (lambda: metrics.tar_at_far(S, q, g), lambda: metrics.rank_metrics(S, q, g),
                 lambda: metrics.eer(S, q, g), lambda: metrics.roc(S, q, g),
                 lambda: metrics.fnir_at_fpir(S, q, g, splits=[[0, 1]]),
                 lambda: metrics.curve_bands(S, q, g, n_boot=5),
                 lambda: metrics.verification(S[0], S[1])):
        with pytest.raises(ValueError, match="no finite score"):
            call()
    ok = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="merge_score_mat: no finite score"):
        metrics.evaluate(ok, S, q, q, q, g, g, g, g)


@pytest.mark.parametrize("memory", OUT_OF_CORE)
@pytest.mark.parametrize("method", ["zscore", "minmax", "rhe", "weighted", "bssf", "asym_ao"])
def test_calibration_model_without_finite_score(capsys, files, method, memory):
    """A calibration file whose face model is all NaN used to give rows equal to the face
    row (z-score...) or all tied (asym_ao)."""
    result = run(capsys, "evaluate", files["ex"], "--quiet", "--fusion", method,
                 "--calibration", files["face_nan"], *memory)
    assert_user_error(result, "calibration model 'face'")
    assert "no finite score" in result[2][0]


def test_calibration_statistics_not_finite_and_bad_weights(example):
    huge = copy.deepcopy(example)
    huge.score_mats = {m: a.astype(np.float64) * 1e300 for m, a in example.score_mats.items()}
    with pytest.raises(ValueError, match="calibration model 'face'.*statistics are not finite"):
        fuse(example, "zscore", calibration=huge)
    for weights in ([np.nan, 1, 1], [np.inf, 1, 1]):
        with pytest.raises(ValueError, match="finite non-negative"):
            fuse(example, "weighted", calibration=example, weights=weights)
    nan_face = example.subset_models(example.models)
    nan_face.score_mats = dict(example.score_mats, face=np.full_like(
        example.score_mats["face"], np.nan))
    with pytest.raises(ValueError, match="face/score_mat: no finite score"):
        fuse(nan_face, "asym_ao", calibration=example)  # the fused matrices themselves


@pytest.mark.parametrize("name", ["q_pids", "unique_g_pids", "quality", " ", "", " qme",
                                  "a,b", "a/b", ".", "x\ty"])
def test_fuse_reserved_or_blank_names(capsys, tmp_path, files, checkpoint, name):
    before = _digest(files["ex"])
    out = tmp_path / "fused.h5"
    assert_user_error(run(capsys, "fuse", checkpoint, files["ex"], "--out", out, "--name",
                          name), "invalid --name")
    assert not out.exists() and _digest(files["ex"]) == before
    with pytest.raises(ValueError, match="invalid model name"):
        load_scores(files["ex"]).with_model(name, np.zeros((24, 36), np.float32))


def test_fuse_zero_probes(capsys, tmp_path, files, checkpoint):
    assert_user_error(run(capsys, "fuse", checkpoint, files["zero_probes"], "--out",
                          tmp_path / "f.h5"), "no probe")


# ------------------------------------------------------------------------------------------
# checkpoints and training
# ------------------------------------------------------------------------------------------
TRAIN = ("--steps", "4", "--qe-steps", "4", "--eval-every", "2", "--quiet")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, files):
    """A --checkpoint file (with the training state for --resume) of a tiny run."""
    d = tmp_path_factory.mktemp("ckpt")
    assert cli.main(["train", str(files["ex"]), "--val", str(files["ex"]), "--out",
                     str(d / "m.pt"), "--checkpoint", str(d / "ck.pt"), *TRAIN]) == 0
    return d / "ck.pt"


def _tamper(data: dict, edit):
    data = copy.deepcopy(data)
    edit(data)
    return data


def _state(d):
    return d["extra"]["train_state"]


TAMPERED = {  # (edit, what the line names)
    "fewer models": (lambda d: d.__setitem__("models", d["models"][:2]), "qme_state"),
    "more models": (lambda d: d["models"].append("iris"), "qme_state"),
    "no qme_state": (lambda d: d.pop("qme_state"), "'qme_state' is missing"),
    "qme_state a list": (lambda d: d.__setitem__("qme_state", [1]), "must be a dict"),
    "num_experts a string": (lambda d: d["qme_args"].__setitem__("num_experts", "2"),
                             "qme_args.num_experts"),
    "num_experts 1e9": (lambda d: d["qme_args"].__setitem__("num_experts", 10 ** 9),
                        "qme_args.num_experts"),
    "one expert more": (lambda d: d["qme_args"].__setitem__("num_experts", 3), "missing"),
    "NaN weight": (lambda d: d["qme_state"]["experts.0.fc1.weight"].fill_(math.nan),
                   "NaN or inf"),
    "inf QE weight": (lambda d: d["qe_state"]["fc3.bias"].fill_(math.inf), "NaN or inf"),
    "wrong shape": (lambda d: d["qme_state"].__setitem__("experts.0.fc1.weight",
                                                         torch.zeros(2, 2)), "has shape (2, 2)"),
    "missing key": (lambda d: d["qme_state"].pop("experts.0.bias"), "missing"),
    "qe_args without state": (lambda d: d.__setitem__("qe_args", None), "qe_args"),
    "quality dim": (lambda d: d["quality"].__setitem__("dim", 99), "quality.dim"),
    "dropout 2": (lambda d: d["qme_args"].__setitem__("dropout", 2.0), "qme_args.dropout"),
    "models a string": (lambda d: d.__setitem__("models", "face,body"), "'models'"),
    "foreign format": (lambda d: d.__setitem__("format", "other/1"), "not a QME checkpoint"),
    "optimizer moment shape": (
        lambda d: _state(d)["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(7)),
        "optimizer.state.0.exp_avg"),
    "optimizer groups": (
        lambda d: _state(d)["optimizer"]["param_groups"][0].__setitem__("params", [0]),
        "optimizer.param_groups"),
    "rng state": (lambda d: _state(d).__setitem__("torch_rng", torch.zeros(3, dtype=torch.uint8)),
                  "torch_rng"),
    "step a string": (lambda d: _state(d).__setitem__("step", "5"), "train_state.step"),
    "history": (lambda d: _state(d).__setitem__("history", {"step": "x"}), "history"),
}


@pytest.mark.parametrize("variant", sorted(TAMPERED))
def test_tampered_checkpoint_is_one_line(capsys, tmp_path, files, checkpoint, variant):
    edit, needle = TAMPERED[variant]
    bad = tmp_path / "bad.pt"
    torch.save(_tamper(torch.load(checkpoint, weights_only=True), edit), bad)
    before = _digest(files["ex"])
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(bad)
    assert_user_error(run(capsys, "fuse", bad, files["ex"], "--out", tmp_path / "f.h5"),
                      needle)
    assert_user_error(run(capsys, "train", files["ex"], "--val", files["ex"], "--out",
                          tmp_path / "m.pt", "--resume", bad, *TRAIN), needle)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "m.pt").exists()
    assert _digest(files["ex"]) == before


def test_resume_needs_a_training_state(capsys, tmp_path, files, checkpoint):
    bad = tmp_path / "bad.pt"
    torch.save(_tamper(torch.load(checkpoint, weights_only=True),
                       lambda d: d["extra"].pop("train_state")), bad)
    assert_user_error(run(capsys, "train", files["ex"], "--val", files["ex"], "--out",
                          tmp_path / "m.pt", "--resume", bad, *TRAIN), "no training state")
    assert_user_error(run(capsys, "train", files["ex"], "--val", files["ex"], "--out",
                          tmp_path / "m.pt", "--resume", checkpoint, "--experts", "3", *TRAIN),
                      "--experts 3")


def test_train_on_nan_inputs_gives_finite_weights(capsys, tmp_path, files, example):
    """One NaN score and NaN/inf quality used to give exit 0 and an all-NaN checkpoint,
    then a 100%-NaN fused model: now the reference's nan_to_num rule, with a warning."""
    path = tmp_path / "nan.h5"
    shutil.copyfile(files["ex"], path)
    with h5py.File(path, "r+") as f:
        s = np.asarray(f["face/score_mat"])
        s[0, 0] = np.nan
        f["face/score_mat"][...] = s
        q = np.asarray(f["quality/face"])
        q[1, 0], q[2, 3] = np.nan, np.inf
        f["quality/face"][...] = q
    before = _digest(path)
    code, _, lines = run(capsys, "train", path, "--val", path, "--out", tmp_path / "m.pt",
                         *TRAIN)
    assert code == 0, lines
    warned = [ln for ln in lines if "NaN/inf entries" in ln]
    assert len(warned) == 2 and "1 in face/score_mat" in warned[0] \
        and "2 in quality/face" in warned[0]
    model, qe, _ = load_checkpoint(tmp_path / "m.pt")  # the schema: every weight finite
    code, _, lines = run(capsys, "fuse", tmp_path / "m.pt", path, "--out", tmp_path / "f.h5",
                         "--quiet")
    assert code == 0 and any("NaN/inf entries" in ln for ln in lines)
    fused = load_scores(tmp_path / "f.h5", models=["qme"])
    assert np.isfinite(fused.score_mats["qme"]).all()
    assert np.isfinite(fused.merge_score_mats["qme"]).all()
    assert _digest(path) == before


def test_diverging_training_is_a_named_error(tmp_path, example):
    from qme_ext.qme.train import TrainConfig, fit_qme
    cfg = TrainConfig(lr=math.inf, max_steps=2, eval_every=1, quiet=True, warm_start=False)
    with pytest.raises(NonFiniteWeightsError, match="QME experts at training step 1"):
        fit_qme(example, example, None, cfg)
    from qme_ext.qme.train import make_qme
    model = make_qme(example.models, cfg)
    with torch.no_grad():
        model.experts[0].fc1.weight.fill_(math.nan)
    with pytest.raises(NonFiniteWeightsError, match="experts.0.fc1.weight"):
        save_checkpoint(tmp_path / "nan.pt", model, None, cfg, example.models)
    assert not (tmp_path / "nan.pt").exists()


# ------------------------------------------------------------------------------------------
# verification labels; what torch users pass
# ------------------------------------------------------------------------------------------
def test_verification_labels_of_any_numeric_dtype():
    """0/1 int or float labels used to be read as impostor scores (EER 0.280, not 0.166);
    since issue 27 labels are given by name (``labels=``), never guessed from values."""
    rng = np.random.default_rng(1)
    gen, imp = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    scores, y = np.r_[gen, imp], np.r_[np.ones(200), np.zeros(200)]
    want = metrics.verification(gen, imp).as_dict()
    for labels in (y.astype(bool), y.astype(np.int64), y.astype(np.uint8), y,
                   y.astype(np.float32), torch.as_tensor(y, dtype=torch.int32), y.tolist()):
        assert metrics.verification(scores, labels=labels).as_dict() == want
    for labels in ((2 * y - 1).astype(np.int64), (y + 1).astype(np.int16)):
        with pytest.raises(ValueError, match="labels: expected bool or 0/1 labels"):
            metrics.verification(scores, labels=labels)
    with pytest.raises(TypeError, match="labels: expected a numeric vector"):
        metrics.verification(scores, labels=np.array(["genuine"] * 400))
    # float impostor scores as many as the genuine ones stay scores
    assert metrics.verification(gen, imp[::-1].copy()).num_impostor == 200


def _with_grad(x):
    return torch.tensor(np.asarray(x), requires_grad=True)


def test_every_metric_takes_tensors_that_require_grad(example):
    S, M = example.score_mats["face"], example.merge_score_mats["face"]
    q, g = example.q_pids, example.g_pids
    ids = [getattr(example, k) for k in IDS]
    want = metrics.evaluate(S, M, *ids)
    got = metrics.evaluate(_with_grad(S), _with_grad(M), *ids)
    assert got.keys() == want.keys()
    np.testing.assert_array_equal(list(got.values()), list(want.values()))
    Sg = _with_grad(S)
    assert metrics.rank_metrics(Sg, q, g).mAP == metrics.rank_metrics(S, q, g).mAP
    np.testing.assert_array_equal(metrics.tar_at_far(Sg, q, g).tar, metrics.tar_at_far(S, q, g).tar)
    assert metrics.eer(Sg, q, g) == metrics.eer(S, q, g)
    np.testing.assert_array_equal(metrics.roc(Sg, q, g)[1], metrics.roc(S, q, g)[1])
    np.testing.assert_array_equal(metrics.det(Sg, q, g)[1], metrics.det(S, q, g)[1])
    np.testing.assert_array_equal(metrics.cmc_curve(Sg, q, g), metrics.cmc_curve(S, q, g))
    np.testing.assert_array_equal(
        metrics.fnir_at_fpir(_with_grad(M), q, example.unique_g_pids).fnir_mean,
        metrics.fnir_at_fpir(M, q, example.unique_g_pids).fnir_mean)
    np.testing.assert_array_equal(metrics.curve_bands(Sg, q, g, n_boot=5)["cmc"],
                                  metrics.curve_bands(S, q, g, n_boot=5)["cmc"])
    gen, imp = _with_grad(S[0, :5]), _with_grad(S[1, 5:])
    assert metrics.verification(gen, imp).eer == metrics.verification(S[0, :5], S[1, 5:]).eer
    assert not Sg.grad_fn and Sg.requires_grad  # the input is untouched


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_device_cuda_without_cuda_names_device(example):
    S, q, g = example.score_mats["face"], example.q_pids, example.g_pids
    ids = [getattr(example, k) for k in IDS]
    for call in (lambda: metrics.tar_at_far(S, q, g, device="cuda"),
                 lambda: metrics.eer(S, q, g, device="cuda:0"),
                 lambda: metrics.evaluate(S, example.merge_score_mats["face"], *ids,
                                          device="cuda"),
                 lambda: metrics.verification(S[0], S[1], device="cuda"),
                 lambda: fuse(example, "zscore", device="cuda")):
        with pytest.raises(ValueError, match="device: 'cuda(:0)?' requested but CUDA is not"):
            call()
    with pytest.raises(ValueError, match="device: expected a torch device"):
        metrics.tar_at_far(S, q, g, device="gpu")
