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


def test_curve_bands_are_the_metric_intervals(tmp_path):
    """ROC/DET bands and CMC error bars (issue 12) are the intervals tar_at_far and
    rank_metrics give with the same bootstrap options, in memory and out of core."""
    from qme_ext import plots, streaming
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    ss = make_example_scoreset(num_probes=40, num_gallery=150, num_subjects=12, seed=3)
    S = ss.score_mats["face"]
    boot = dict(ci=0.9, n_boot=60, boot_seed=5)
    bands = metrics.curve_bands(S, ss.q_pids, ss.g_pids, ss.q_camids, ss.g_camids, points=12,
                                **boot)
    far, lo, hi = bands["roc_band"]
    tr = metrics.tar_at_far(S, ss.q_pids, ss.g_pids, fars=far, **boot)
    np.testing.assert_array_equal(lo, tr.tar_ci[:, 0])
    np.testing.assert_array_equal(hi, tr.tar_ci[:, 1])
    assert np.all(lo <= tr.tar) and np.all(tr.tar <= hi)
    rk = metrics.rank_metrics(S, ss.q_pids, ss.g_pids, ss.q_camids, ss.g_camids, **boot)
    np.testing.assert_array_equal(bands["cmc_ci"], rk.cmc_ci)
    curves = plots.curves_of_matrix(S, ss, boot=boot)
    np.testing.assert_array_equal(curves["cmc_ci"], rk.cmc_ci)
    path = tmp_path / "s.h5"
    save_scores(path, ss)
    streamed = streaming.curves_file(path, "face", block_rows=7, **boot)
    for a, b in zip(streamed["roc_band"], curves["roc_band"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(streamed["cmc_ci"], curves["cmc_ci"])
    if plots.available():
        names = plots.write_curve_plots(tmp_path / "p", {"face": curves}, hist_rows=[])
        assert names == ["roc.png", "det.png", "cmc.png"]
        assert all((tmp_path / "p" / n).stat().st_size > 1000 for n in names)
