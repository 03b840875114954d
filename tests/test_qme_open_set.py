"""Issue 19: missing modalities, leave-subject-out open-set validation, one score scale
across quality strata, and the safety net of the robust recipe."""
import dataclasses

import numpy as np
import pytest
import torch

from qme_ext.datasets.synthetic import synthetic_wholebody
from qme_ext.qme import train as T
from qme_ext.qme.calibration import StratumOffsets, tail_statistics
from qme_ext.qme.checkpoint import load_checkpoint, save_checkpoint
from qme_ext.qme.missing import absent_modalities, impute_absent
from qme_ext.qme.openset import lso_fnir
from qme_ext.qme.warm_start import fit_gated_logistic, set_linear_experts

SMALL = dict(num_subjects=30, num_train_subjects=40, num_val_subjects=20, num_unknown=6)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small():
    return synthetic_wholebody("mixed", seed=11, score_drift=0.5, **SMALL)


def _linear_model(train, q=None):
    """A QME holding the gated linear fit of ``train`` (no training), open-set spec set."""
    cfg = T.TrainConfig(quiet=True)
    view = T._TrainView(train, train.models, None, cfg, CPU)
    qq = view.q_np if q is None else q
    fit = fit_gated_logistic(view.x_np, qq, train.q_pids[:, None] == train.g_pids[None, :])
    model = T.make_qme(train.models, cfg)
    set_linear_experts(model, fit, view.x_np)
    model.open_set = {"quality_model": "face", "quality_name": "face", "calibration": None}
    return model.eval(), fit


def test_absent_modalities_nan_zero_rows_and_faceless_probes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 6)).astype(np.float32)
    x[0, 1] = np.nan                          # a NaN row: absent
    x[1, 2] = 0.0                             # the reference's nan_to_num of a NaN row
    x[2, 0, :3], x[2, 0, 3:] = 0.0, np.nan    # zeros and NaN mixed: absent
    x[3, 1, 2] = np.nan                       # one NaN entry: present
    feats = rng.normal(size=(5, 4))
    feats[4] = 0.0                            # no face detected: the face model is absent
    want = np.zeros((5, 3), bool)
    want[0, 1] = want[1, 2] = want[2, 0] = want[4, 0] = True
    np.testing.assert_array_equal(absent_modalities(x, feats, 0), want)
    want[4, 0] = False
    np.testing.assert_array_equal(absent_modalities(x), want)
    before = x.copy()
    out = impute_absent(x, want, [10.0, 20.0, 30.0])
    assert np.array_equal(x, before, equal_nan=True)          # input never overwritten
    assert np.isfinite(out).all()
    assert (out[0, 1] == 20.0).all() and (out[1, 2] == 30.0).all() and out[3, 1, 2] == 20.0
    assert out[3, 1, 0] == x[3, 1, 0]
    with pytest.raises(ValueError, match="x: expected"):
        absent_modalities(x[0])


def test_absent_face_weight_goes_to_the_present_models(small):
    """A NaN (or zero) face row, or all-zero face quality features, give exactly the fusion
    of body and gait alone: q (w1 . y + c1) + (1 - q)(w2 . y + c2) with the face term 0."""
    train, test = small["train"], small["test"]
    model, fit = _linear_model(train)
    ss = dataclasses.replace(test, score_mats=dict(test.score_mats),
                             merge_score_mats=dict(test.merge_score_mats),
                             quality=dict(test.quality))
    face = ss.score_mats["face"].copy()
    has_face = small["meta"]["test"]["has_face"]
    p_nan, p_zero = np.flatnonzero(has_face)[:2]
    face[p_nan] = np.nan
    face[p_zero] = 0.0
    ss.score_mats["face"] = face
    S, M = T.predict(model, None, ss)
    assert np.isfinite(S).all() and np.isfinite(M).all()
    x = np.stack([test.score_mats[m] for m in test.models], 1).astype(np.float64)
    y = (np.moveaxis(x, 1, 2) - fit.mean) / np.sqrt(fit.var + 1e-5)       # (P, G, K)
    y[[p_nan, p_zero], :, 0] = 0.0
    y[~has_face, :, 0] = 0.0                   # all-zero face quality features: absent too
    q = 0.5                                    # no QE: the constant gate
    want = q * (y @ fit.weights[0] + fit.offsets[0]) + (1 - q) * (y @ fit.weights[1]
                                                                  + fit.offsets[1])
    np.testing.assert_allclose(S, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # a probe without a face: whatever its face matcher returned, the same fused scores
    p_noface = np.flatnonzero(~has_face)[0]
    face2 = face.copy()
    face2[p_noface] = np.random.default_rng(1).normal(0.5, 0.3, face.shape[1])
    S2, _ = T.predict(model, None, dataclasses.replace(ss, score_mats={**ss.score_mats,
                                                                     "face": face2}))
    np.testing.assert_array_equal(S2[p_noface], S[p_noface])
    # the paper path (no open-set spec): NaN still never reaches the output
    model.open_set = None
    assert np.isfinite(T.predict(model, None, ss)[0]).all()


def _lso_direct(merge, q_pids, sid, fpir):
    """Leave-subject-out FNIR counted literally (the oracle of lso_fnir)."""
    col = {s: j for j, s in enumerate(sid)}
    nm, gen, win = [], [], []
    for row, p in zip(merge, q_pids):
        if p in col:
            j = col[p]
            others = np.delete(row, j)
            nm.append(others.max())
            gen.append(row[j])
            win.append(row[j] > others.max())
        else:
            nm.append(row.max())
    nm = np.sort(nm)[::-1]
    k = int(len(nm) * fpir)
    t = nm[k - 1] if k >= 1 else nm[0] + 1e-8
    hits = np.array(win) & (np.array(gen) >= t)
    return 1.0 - hits.mean()


def test_lso_fnir_counts_every_probe_as_a_non_mated_search():
    rng = np.random.default_rng(3)
    sid = np.array([2, 5, 7, 9, 11, 13])
    q_pids = np.concatenate([np.repeat(sid, 4), [100, 101, 102]])
    merge = rng.normal(size=(q_pids.size, sid.size))
    for i, p in enumerate(q_pids):
        if p in sid:
            merge[i, np.searchsorted(sid, p)] += 1.5
    for f in (0.01, 0.1, 0.3):
        got = lso_fnir(merge, q_pids, sid, (f,))
        assert got[f"FNIR@{100 * f:.2f}%FPIR"] == pytest.approx(_lso_direct(merge, q_pids, sid, f))
    assert got["num_nonmated"] == 3 + 24
    # the blind spot: the three unknown probes score low everywhere, so the usual
    # protocol's threshold is low and FNIR 0; the mated probes' own impostor maxima are high
    merge[-3:] = -5.0
    from qme_ext.metrics import fnir_at_fpir
    usual = fnir_at_fpir(merge, q_pids, sid, fpirs=[0.01], splits=[sid]).fnir_mean[0]
    lso = lso_fnir(merge, q_pids, sid, (0.01,))["FNIR@1.00%FPIR"]
    assert lso > usual + 0.1, (lso, usual)


def test_stratum_offsets_undo_a_stratum_shift():
    """A stratum whose open-set searches all sit 2 higher gets offset -2 (both methods),
    shrunk only by its size; ranks are untouched since the offset is per probe."""
    rng = np.random.default_rng(5)
    P = 800
    q = rng.uniform(0, 1, P)
    absent = np.zeros((P, 3), bool)
    absent[:200, 0] = True
    gen = rng.normal(2.0, 1.0, P)
    imp = rng.normal(0.0, 1.0, P)
    gen[:200] += 2.0
    imp[:200] += 2.0
    for method in ("log-odds", "tails"):
        cal = StratumOffsets.fit(gen, imp, q, absent, 0, method=method)
        off = cal.offset(q, absent)
        assert np.ptp(off[200:]) < 0.5, method             # the quality quartiles agree
        rel = off[:200].mean() - off[200:].mean()
        assert rel == pytest.approx(-2.0, abs=0.35), (method, rel)
        again = StratumOffsets.from_dict(cal.as_dict())
        np.testing.assert_array_equal(again.offset(q, absent), off)
    with pytest.raises(ValueError, match="method"):
        StratumOffsets.fit(gen, imp, q, absent, 0, method="median")


def test_one_scale_for_every_probe():
    """Held-out test split of the mixed regime with quality-dependent score scales: with the
    "tails" offsets (fitted on training only) the strata -- no face, and the four face-quality
    quartiles -- agree on the upper impostor tail within the stated tolerance (fused
    log-odds units): median of the per-probe impostor maxima and p99 within 1.0 of each
    other, p99.9 within 1.5. Without offsets they are more than 2.5 apart."""
    d = synthetic_wholebody("mixed", seed=7, score_drift=0.5, num_subjects=60,
                            num_train_subjects=80, num_val_subjects=20, num_unknown=15,
                            train_probes_per_subject=4)
    cfg = T.TrainConfig(qe_steps=100, quiet=True)
    qe = T.fit_quality_estimator(d["train"], None, cfg)
    tr, test = d["train"], d["test"]
    view = T._TrainView(tr, tr.models, qe, cfg, CPU)
    model = T.make_qme(tr.models, cfg)
    fit = fit_gated_logistic(view.x_np, view.q_np, tr.q_pids[:, None] == tr.g_pids[None, :])
    set_linear_experts(model, fit, view.x_np)
    q = T.estimate_quality(qe, test.quality["face"])
    has_face = d["meta"]["test"]["has_face"]
    quart = np.searchsorted(np.quantile(q[has_face], [0.25, 0.5, 0.75]), q, side="right")
    groups = {"no face": ~has_face, **{f"Q{i + 1}": has_face & (quart == i) for i in range(4)}}

    def spreads():
        S, _ = T.predict(model, qe, test)
        st = tail_statistics(S, test.q_pids, test.g_pids, groups)
        assert len(st) == 5 and min(v["n"] for v in st.values()) >= 20
        return {k: np.ptp([v[k] for v in st.values()]) for k in ("max_median", "p99", "p999")}

    view.calibrate(model, "tails")
    one = spreads()
    assert one["max_median"] <= 1.0 and one["p99"] <= 1.0 and one["p999"] <= 1.5, one
    model.open_set = {**model.open_set, "calibration": None}
    none = spreads()
    assert none["max_median"] > 2.5 and none["p99"] > 2.5, none


def test_checkpoint_keeps_the_open_set_state(small, tmp_path):
    train, test = small["train"], small["test"]
    model, _ = _linear_model(train)
    cal = StratumOffsets(np.array([0.2, 0.5, 0.8]), [0, 1, 8], [0.3, -0.2, 1.0], 0)
    model.open_set = {**model.open_set, "calibration": cal.as_dict(), "method": "tails"}
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, None, T.TrainConfig(), train.models, {"safety_net": {
        "kept_start": "quality-weighted mean"}})
    loaded, _, meta = load_checkpoint(path)
    assert loaded.open_set == model.open_set
    assert meta["extra"]["safety_net"]["kept_start"] == "quality-weighted mean"
    np.testing.assert_array_equal(T.predict(loaded, None, test)[0], T.predict(model, None, test)[0])


def test_safety_net_keeps_a_start_that_training_spoilt(small):
    """A learning rate that wrecks the experts: validation is far behind the warm start, so
    the start is kept, and the model says so."""
    cfg = T.TrainConfig(qe_steps=40, max_steps=40, eval_every=20, lr=0.5, modality_dropout=0.5,
                        quiet=True)
    qe = T.fit_quality_estimator(small["train"], small["val"], cfg)
    model = T.fit_qme(small["train"], small["val"], qe, cfg)
    net = model.safety_net
    assert net["kept_start"] is not None, net
    assert net["val_selected"] >= max(net["val_starts"].values()) - 1e-9
    assert model.best_step == 0
    assert net["offsets"] in ("log-odds", "tails", "none")
    assert net["val_offsets"][net["offsets"]] == max(net["val_offsets"].values())
    paper = T.fit_qme(small["train"], small["val"], qe, T.TrainConfig(
        qe_steps=40, max_steps=40, eval_every=20, quiet=True, recipe="paper"))
    assert paper.safety_net is None and getattr(paper, "open_set", None) is None


def test_cli_train_writes_the_safety_net_and_offsets(small, tmp_path, capsys):
    from qme_ext.cli import main
    from qme_ext.io import save_scores
    paths = {}
    for split in ("train", "val"):
        paths[split] = str(tmp_path / f"{split}.h5")
        save_scores(paths[split], small[split])
    out = str(tmp_path / "m.pt")
    assert main(["train", paths["train"], "--val", paths["val"], "--out", out, "--steps", "20",
                 "--qe-steps", "20", "--eval-every", "10"]) == 0
    err = capsys.readouterr().err
    assert "LSO-FNIR" in err and "stratum offsets:" in err
    model, _, meta = load_checkpoint(out)
    net = meta["extra"]["safety_net"]
    assert set(net) >= {"kept_start", "val_selected", "val_starts", "offsets", "val_offsets"}
    assert model.open_set["quality_model"] == "face"
    assert (model.open_set["calibration"] is None) == (net["offsets"] == "none")
