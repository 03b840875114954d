"""Issue 27 (bad input, round two): a test per row of the issue. Command-line rows check
the exit status, the one ``qme-ext: error:`` line and that the folder is byte-unchanged
(helpers of tests/test_bad_input.py); API rows a ValueError/TypeError naming the argument.
The output rule's rows are in tests/test_output_rule.py."""
import json

import numpy as np
import pytest
import torch

from qme_ext import cli, metrics

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
