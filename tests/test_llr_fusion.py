"""The llr (linear logistic regression) fusion baseline (issue 22): the fit against
scikit-learn's balanced LogisticRegression, the fused scores against b + sum_k w_k z_k,
calibration on a training file, row blocks, and the CLI fusion table."""
import json

import numpy as np
import pytest

from qme_ext import cli
from qme_ext.datasets import make_example_scoreset
from qme_ext.fusion import _calibration_inputs, fit_fusion, fit_llr, fuse, parse_method
from qme_ext.io import save_scores
from qme_ext.metrics import verification


@pytest.fixture(scope="module")
def sets():
    return (make_example_scoreset(num_probes=50, num_gallery=100, num_subjects=12, seed=1),
            make_example_scoreset(num_probes=50, num_gallery=100, num_subjects=12, seed=2))


def test_fit_equals_balanced_sklearn_logistic_regression():
    sk = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    gen = rng.normal(1.0, 1.0, (2, 40)) + np.array([[0.5], [0.0]])
    imp = rng.normal(0.0, 1.2, (2, 300))
    w, b = fit_llr(gen, imp, l2=0.0)
    X = np.concatenate([gen, imp], axis=1).T
    y = np.r_[np.ones(40), np.zeros(300)]
    lr = sk.LogisticRegression(C=np.inf, class_weight="balanced", tol=1e-12,
                               max_iter=100000).fit(X, y)
    np.testing.assert_allclose(w, lr.coef_[0], rtol=1e-5)
    assert b == pytest.approx(lr.intercept_[0], rel=1e-5)


def test_separable_data_gives_finite_weights():
    w, b = fit_llr(np.array([[2.0, 3.0]]), np.array([[0.0, 1.0]]))
    assert np.all(np.isfinite(w)) and np.isfinite(b) and w[0] > 0


def test_fused_scores_are_the_affine_llr(sets):
    test, cal = sets
    out, res = fuse(test, "llr", calibration=cal, return_result=True)
    assert parse_method("llr") == ("zscore", "llr") and res.offset != 0.0
    want = res.offset + sum(res.weights[k] * (test.score_mats[m].astype(np.float64)
                                              - res.normalisers[m].mu) /
                            (res.normalisers[m].sigma + 1e-10)
                            for k, m in enumerate(test.models))
    np.testing.assert_allclose(out.score_mats["llr"], want.astype(np.float32), rtol=2e-7,
                               atol=1e-6)
    assert out.merge_score_mats["llr"].shape == test.merge_score_mats["face"].shape
    # refitting the same calibration gives the same model (deterministic)
    again = fit_fusion("llr", cal)
    np.testing.assert_array_equal(again.weights, res.weights)
    with pytest.raises(ValueError, match="weights"):
        fuse(test, "llr", calibration=cal, weights=[1, 1, 1])


def test_llr_scores_are_calibrated_on_the_training_set(sets):
    _, cal = sets
    out = fuse(cal, "llr", calibration=cal)
    S = out.score_mats["llr"].astype(np.float64)
    g = cal.q_pids[:, None] == cal.g_pids[None, :]
    v = verification(S[g], S[~g])
    # prior-weighted logistic regression: on its own training pairs the LLRs satisfy the
    # balanced score equation, and Cllr is close to its PAV bound
    assert v.cllr < 1.0 and v.cllr - v.min_cllr < 0.05


def test_cli_fusion_table_and_out_of_core(sets, tmp_path, capsys):
    test, cal = sets
    save_scores(tmp_path / "t.h5", test)
    save_scores(tmp_path / "c.h5", cal)
    outs = []
    for extra in ([], ["--max-memory", "30KB"]):
        out = tmp_path / f"m{len(extra)}.json"
        assert cli.main(["evaluate", str(tmp_path / "t.h5"), "--fusion", "llr",
                         "--calibration", str(tmp_path / "c.h5"), "--json", str(out),
                         "--quiet", *extra]) == 0
        rows = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[2:]]
        assert rows[-1] == "llr"
        outs.append(json.loads(out.read_text())["llr"])
    assert outs[0] == outs[1]
