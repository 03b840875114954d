"""ROC / DET / EER at exact thresholds, against the reference and scikit-learn."""
import numpy as np
import pytest

from conftest import make_problem, to_device
from qme_ext import metrics
from qme_ext.reference import eer_ref, roc_ref


@pytest.mark.parametrize("ties", [True, False])
def test_roc_matches_reference(device, ties):
    S, ids = make_problem(0, P=30, G=200, ties=ties, nan_frac=0.02)
    far, tar, thr = metrics.roc(to_device(S, device), ids["q_pids"], ids["g_pids"])
    rfar, rtar, rthr = roc_ref(S, ids["q_pids"], ids["g_pids"])
    np.testing.assert_array_equal(thr, rthr)
    np.testing.assert_allclose(far, rfar, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tar, rtar, rtol=0, atol=1e-15)
    dfar, frr = metrics.det(S, ids["q_pids"], ids["g_pids"])
    np.testing.assert_allclose(frr, 1 - rtar, atol=1e-15)


def test_roc_equals_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    S, ids = make_problem(1, P=30, G=200, ties=True)
    labels = (ids["q_pids"][:, None] == ids["g_pids"][None, :]).ravel()
    fpr, tpr, thr = sklearn.roc_curve(labels, S.ravel(), drop_intermediate=False)
    far, tar, t = metrics.roc(S, ids["q_pids"], ids["g_pids"])
    np.testing.assert_allclose(far, fpr[1:], atol=1e-15)
    np.testing.assert_allclose(tar, tpr[1:], atol=1e-15)
    np.testing.assert_array_equal(t, thr[1:])


@pytest.mark.parametrize("seed", [2, 3])
def test_eer_matches_reference(device, seed):
    S, ids = make_problem(seed, P=30, G=200, ties=seed == 2)
    e, t = metrics.eer(to_device(S, device), ids["q_pids"], ids["g_pids"])
    re, rt = eer_ref(S, ids["q_pids"], ids["g_pids"])
    assert e == pytest.approx(re, abs=1e-15) and t == pytest.approx(rt, abs=1e-12)


def test_eer_separable_is_zero():
    S = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1]], dtype=np.float32)
    e, t = metrics.eer(S, [0, 1], [0, 1, 2])
    assert e == 0.0 and 0.3 < t < 0.8
