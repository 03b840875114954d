"""Verification of genuine/impostor vectors (qme_ext.metrics.verification), the pair-file
readers (qme_ext.io.load_pairs) and ``qme-ext verify``; peers: pyeer, scikit-learn,
bob.measure (each skipped when not installed)."""
import json
import warnings

import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics.verification import verification
from qme_ext.metrics.nonfinite import NonFiniteScoreWarning


def _vectors(seed=0, tied=False, n_gen=800, n_imp=12000):
    rng = np.random.default_rng(seed)
    g, i = rng.normal(2.0, 1.0, n_gen), rng.normal(0.0, 1.0, n_imp)
    if tied:
        g, i = np.round(g * 5) / 5, np.round(i * 5) / 5
    return g, i


def _labelled(g, i):
    return np.r_[g, i], np.r_[np.ones(g.size, bool), np.zeros(i.size, bool)]


@pytest.mark.parametrize("tied", [False, True])
def test_verification_is_the_one_row_engine(device, tied):
    g, i = _vectors(1, tied)
    s, y = _labelled(g, i)
    r = verification(torch.as_tensor(g, device=device), torch.as_tensor(i, device=device))
    S, gp = s[None, :], y.astype(np.int64)
    tr = metrics.tar_at_far(S, [1], gp, (1e-4, 1e-3, 1e-2))
    np.testing.assert_array_equal(r.fnmr_at_fmr, 1.0 - tr.tar)
    np.testing.assert_array_equal(r.fmr_threshold, tr.threshold)
    assert (r.eer, r.eer_threshold) == metrics.eer(S, [1], gp)
    far, tar, thr = metrics.roc(S, [1], gp)
    for got, want in zip(r.roc, (far, tar, thr)):
        np.testing.assert_array_equal(got, want)
    # the (scores, labels) form and the float32 / tensor forms give the same report
    r2 = verification(s, labels=y)
    assert r2.as_dict() == r.as_dict()
    r32 = verification(g.astype(np.float32), i.astype(np.float32))
    assert r32.num_genuine == g.size and r32.num_impostor == i.size


def test_verification_definitions_small():
    # genuine 3, 2, 2; impostor 2, 1, 0, 0: thresholds 3 > 2 > 1 > 0
    r = verification([3.0, 2.0, 2.0], [2.0, 1.0, 0.0, 0.0], fars=[0.25], fnmrs=[0.2, 0.7])
    assert r.zero_fmr == pytest.approx(2 / 3)  # threshold above 2: only the 3 accepted
    assert r.zero_fnmr == pytest.approx(1 / 4)  # threshold 2: the impostor 2 accepted
    np.testing.assert_allclose(r.fmr_at_fnmr, [0.25, 0.0])
    # AUC: P(g > i) + P(tie) / 2 = (4 + 3.5 + 3.5) / 12
    assert r.auc == pytest.approx(11 / 12)
    with pytest.raises(ValueError, match="convention"):
        verification([1.0], [0.0], convention="fvc")
    with pytest.raises(ValueError, match="genuine and one impostor"):
        verification([1.0, 2.0], labels=np.array([True, True]))


@pytest.mark.parametrize("tied", [False, True])
def test_verification_against_sklearn(tied):
    skm = pytest.importorskip("sklearn.metrics")
    g, i = _vectors(2, tied)
    s, y = _labelled(g, i)
    r = verification(g, i)
    assert r.auc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(r.roc[0], fpr[1:], atol=1e-15)
    np.testing.assert_allclose(r.roc[1], tpr[1:], atol=1e-15)
    scipy = pytest.importorskip("scipy")
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    fpr, tpr, _ = skm.roc_curve(y, s)
    want = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-14)
    assert scipy and r.eers["sklearn"][0] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("tied", [False, True])
def test_verification_against_pyeer(tied):
    pe = pytest.importorskip("pyeer.eer_stats")  # pyeer.eer_info needs pkg_resources
    g, i = _vectors(3, tied)
    r = verification(g, i, convention="pyeer")
    thr, fmr, fnmr = pe.calculate_roc(g, i)
    idx, _, _, want = pe.get_eer_values(fmr, fnmr)
    assert r.eer == pytest.approx(want, abs=1e-15)
    assert r.eer_threshold == thr[idx]
    # the largest score is genuine here, so pyeer's curve reaches FMR = 0
    assert g.max() > i.max()
    assert r.auc == pytest.approx(pe.calculate_roc_auc(fmr, fnmr), abs=1e-12)
    assert r.zero_fmr == pytest.approx(pe.get_fmr_op(fmr, fnmr, 0)[1], abs=1e-15)
    assert r.zero_fnmr == pytest.approx(pe.get_fnmr_op(fmr, fnmr, 0)[1], abs=1e-15)
    want_d = pe.get_decidability_value(g.mean(), g.std(), i.mean(), i.std())
    assert r.d_prime == pytest.approx(want_d, rel=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_verification_against_bob_measure(tied):
    bob = pytest.importorskip("bob.measure")
    g, i = _vectors(4, tied)
    r = verification(g, i, convention="bob")
    assert r.eer == pytest.approx(bob.eer(i, g), abs=1e-15)
    assert r.eer_threshold == pytest.approx(bob.eer_threshold(i, g), abs=0)


def test_verification_conventions_differ_on_ties():
    g, i = _vectors(5, tied=True)
    eers = {k: v[0] for k, v in verification(g, i).eers.items()}
    assert len(set(eers.values())) == 3, eers
    g, i = _vectors(5, tied=False, n_gen=20000, n_imp=20000)
    eers = [v[0] for v in verification(g, i).eers.values()]
    assert max(eers) - min(eers) < 2e-4


def test_verification_warns_on_nonfinite():
    g, i = _vectors(6)
    g[0], i[0], i[1] = np.nan, np.inf, -np.inf
    with pytest.warns(NonFiniteScoreWarning, match=r"1 NaN .*1 \+inf.*1 -inf"):
        r = verification(g, i)
    assert r.num_nonfinite == {"nan": 1, "posinf": 1, "neginf": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verification(g, i, warn=False)
        verification(*_vectors(6))


# ------------------------------------------------------------------------------------------
# pair files and qme-ext verify
# ------------------------------------------------------------------------------------------
import pathlib  # noqa: E402

from qme_ext import cli  # noqa: E402
from qme_ext.io import ScoreFileError, load_pairs  # noqa: E402

PYEER = pathlib.Path(__file__).parent / "fixtures" / "pyeer"


def _write_bob(path, g, i, columns=4):
    with open(path, "w") as fh:
        fh.write("# a comment line\n")
        for k, s in enumerate(np.r_[g, i]):
            claimed, real = f"s{k % 7}", f"s{k % 7}" if k < g.size else f"s{(k + 1) % 7}"
            mid = f"{claimed}_model " if columns == 5 else ""
            fh.write(f"{claimed} {mid}{real} probe{k} {float(s)!r}\n")


def test_load_pairs_formats(tmp_path):
    g, i = _vectors(7, n_gen=50, n_imp=300)
    for columns in (4, 5):
        path = tmp_path / f"bob{columns}.txt"
        _write_bob(path, g, i, columns)
        p = load_pairs(path)
        assert p.format == f"bob{columns}" and p.name == path.name
        np.testing.assert_array_equal(p.genuine, g)
        np.testing.assert_array_equal(p.impostor, i)
    s, y = _labelled(g, i)
    (tmp_path / "a.csv").write_text("score,label\n" + "".join(
        f"{float(v)!r},{int(t)}\n" for v, t in zip(s, y)))
    (tmp_path / "b.csv").write_text("claimed_id;real_id;score\n" + "".join(
        f"{k};{k if t else k + 1};{float(v)!r}\n" for k, (v, t) in enumerate(zip(s, y))))
    np.savez(tmp_path / "a.npz", genuine=g, impostor=i)
    np.savez(tmp_path / "b.npz", scores=s, labels=y)
    np.save(tmp_path / "a.npy", np.c_[s, y])
    for name in ("a.csv", "b.csv", "a.npz", "b.npz", "a.npy"):
        p = load_pairs(tmp_path / name)
        np.testing.assert_array_equal(p.genuine, g, err_msg=name)
        np.testing.assert_array_equal(p.impostor, i, err_msg=name)
    np.savetxt(tmp_path / "g.txt", g)
    np.savetxt(tmp_path / "i.txt", i)
    p = load_pairs(tmp_path / "g.txt", impostor=tmp_path / "i.txt")
    np.testing.assert_allclose(p.genuine, g, rtol=1e-15)
    with pytest.raises(ScoreFileError, match="one side"):
        load_pairs(tmp_path / "g.txt")
    (tmp_path / "bad.txt").write_text("a b 1.0\n")
    with pytest.raises(ScoreFileError, match="3 fields"):
        load_pairs(tmp_path / "bad.txt")
    (tmp_path / "c.csv").write_text("value,label\n1,1\n")
    with pytest.raises(ScoreFileError, match="no 'score' column"):
        load_pairs(tmp_path / "c.csv")


def test_pyeer_histogram_impostor_format():
    """pyeer's histogram example is its exp3 score set: 1,501 distinct integer scores, on
    which the three EER conventions disagree."""
    p = load_pairs(PYEER / "hist_true.txt", impostor=PYEER / "hist_false.txt",
                   impostor_format="histogram")
    assert (p.genuine.size, p.impostor.size) == (2786, 66633)
    r = verification(p.genuine, p.impostor)
    got = {k: round(v[0], 5) for k, v in r.eers.items()}
    assert got == {"bob": 0.1171, "pyeer": 0.11417, "sklearn": 0.11702}
    pe = pytest.importorskip("pyeer.eer_stats")
    counts = np.loadtxt(PYEER / "hist_false.txt")
    _, fmr, fnmr = pe.calculate_roc_hist(p.genuine, counts)
    # pyeer's histogram thresholds are the integers 0..max: every distinct score is one
    assert r.eers["pyeer"][0] == pytest.approx(pe.get_eer_values(fmr, fnmr)[3], abs=1e-15)


def test_cli_verify(tmp_path, capsys):
    g, i = _vectors(8, n_gen=60, n_imp=400)
    _write_bob(tmp_path / "sys.txt", g, i)
    out, plots = tmp_path / "v.json", tmp_path / "plots"
    argv = ["verify", str(PYEER / "exp2_true.txt"), str(PYEER / "exp2_false.txt"),
            str(tmp_path / "sys.txt"), "--names", "pyeer_exp2,bob", "--json", str(out),
            "--convention", "pyeer", "--quiet"]
    pytest.importorskip("matplotlib")
    assert cli.main(argv + ["--plots", str(plots)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["Row", "EER(pyeer)"]
    assert "pyeer_exp2" in table and "bob" in table
    rep = json.loads(out.read_text())
    p = load_pairs(PYEER / "exp2_true.txt", impostor=PYEER / "exp2_false.txt")
    want = verification(p.genuine, p.impostor, convention="pyeer").as_dict()
    assert rep["pyeer_exp2"]["EER"] == pytest.approx(want["EER"], abs=1e-15)
    assert rep["bob"]["num_genuine"] == g.size
    assert rep["bob"]["num_nonfinite"] == {"nan": 0, "posinf": 0, "neginf": 0}
    assert sorted(f.name for f in plots.iterdir()) == [
        "det.png", "roc.png", "score_hist_bob.png", "score_hist_pyeer_exp2.png"]
    # user errors: one line, status 2
    assert cli.main(["verify", str(PYEER / "exp2_true.txt")]) == 2
    assert "GENUINE IMPOSTOR" in capsys.readouterr().err
    assert cli.main(["verify", str(tmp_path / "missing.txt")]) == 2
    assert cli.main(["verify", str(tmp_path / "sys.txt"), "--fmrs", "2"]) == 2


def test_cli_verify_warns_on_nonfinite(tmp_path, capsys):
    g, i = _vectors(9, n_gen=60, n_imp=400)
    g[3], i[5] = np.nan, np.inf
    _write_bob(tmp_path / "sys.txt", g, i)
    assert cli.main(["verify", str(tmp_path / "sys.txt"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["qme-ext: warning: sys.txt: 1 NaN (-> the minimum non-NaN score), "
                   "1 +inf (kept: above every finite score)"]
