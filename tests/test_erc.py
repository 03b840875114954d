"""Error versus reject curves (issue 22): both definitions on hand-derived cases, the
matrix form's pair quality (min of the two), input checks and the plot."""
import numpy as np
import pytest

from qme_ext.metrics.erc import erc, erc_pairs

GEN = [2.5, 5.0, 3.5, 1.0]
GEN_Q = [0.1, 0.9, 0.5, 0.2]
IMP = [1.0, 2.0, 3.0, 4.0]
IMP_Q = [0.05, 0.3, 0.6, 0.95]


def test_fixed_threshold_hand_case():
    # FMR 1/2 of 4 impostors: k = 2, t = the 2nd largest impostor = 3, fixed.
    # genuine by quality: 2.5, 1, 3.5, 5. r = 0: 2.5 and 1 are below 3 -> 1/2;
    # r = 1/4 drops 2.5 -> 1/3; r = 1/2 drops 1 too -> 0
    r = erc_pairs(GEN, IMP, GEN_Q, fmr=0.5, rejection=[0.0, 0.25, 0.5])
    np.testing.assert_allclose(r.fnmr, [0.5, 1 / 3, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(r.threshold, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(r.num_genuine, [4, 3, 2])
    assert r.auc == pytest.approx(0.25 * (0.5 + 1 / 3) / 2 + 0.25 * (1 / 3) / 2, abs=1e-15)
    assert r.as_dict()["definition"] == "fixed"


def test_recomputed_threshold_hand_case():
    # all pairs by quality: i1 g2.5 g1 i2 g3.5 i3 g5 i4 (N = 8).
    # r = 1/4 drops i1, g2.5: kept impostors 2 3 4, k = 2 -> t = 3; genuine 1 3.5 5 -> 1/3.
    # r = 1/2 drops g1, i2 too: impostors 3 4, k = 1 -> t = 4; genuine 3.5 5 -> 1/2
    r = erc_pairs(GEN, IMP, GEN_Q, IMP_Q, fmr=0.5, rejection=[0.0, 0.25, 0.5],
                  threshold="recomputed")
    np.testing.assert_allclose(r.fnmr, [0.5, 1 / 3, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(r.threshold, [3.0, 3.0, 4.0])


def test_matrix_form_uses_the_min_pair_quality():
    rng = np.random.default_rng(0)
    P, G = 20, 30
    q_pids, g_pids = rng.integers(0, 6, P), rng.integers(0, 6, G)
    S = rng.normal(size=(P, G)) + 2.0 * (q_pids[:, None] == g_pids[None, :])
    qq, gq = rng.random(P), rng.random(G)
    gen = q_pids[:, None] == g_pids[None, :]
    pq = np.minimum(qq[:, None], gq[None, :])
    for kind in ("fixed", "recomputed"):
        got = erc(S, q_pids, g_pids, qq, gq, fmr=0.05, threshold=kind)
        want = erc_pairs(S[gen], S[~gen], pq[gen], pq[~gen], fmr=0.05, threshold=kind)
        np.testing.assert_array_equal(got.fnmr, want.fnmr)
    # probe quality only: the probe's quality is the pair's
    got = erc(S, q_pids, g_pids, qq[:, None], fmr=0.05)
    pq = np.repeat(qq[:, None], G, axis=1)
    np.testing.assert_array_equal(got.fnmr, erc_pairs(S[gen], S[~gen], pq[gen],
                                                      fmr=0.05).fnmr)


def test_an_oracle_quality_drives_fnmr_to_zero():
    rng = np.random.default_rng(1)
    gen, imp = rng.normal(2, 1, 400), rng.normal(0, 1, 4000)
    good = erc_pairs(gen, imp, gen, fmr=0.01)  # quality = the genuine score itself
    noise = erc_pairs(gen, imp, rng.random(400), fmr=0.01)
    assert np.all(np.diff(good.fnmr) <= 0) and good.fnmr[-1] == 0.0
    assert good.auc < noise.auc


def test_nan_scores_take_the_minimum():
    r = erc_pairs([np.nan, 5.0], [1.0, 2.0], [0.0, 1.0], fmr=0.5, rejection=[0.0])
    assert r.fnmr[0] == 0.5  # the NaN genuine score ranks lowest: a false non-match


@pytest.mark.parametrize("kw,needle", [
    (dict(threshold="moving"), "threshold"),
    (dict(threshold="recomputed"), "impostor_quality"),
    (dict(fmr=0.0), "fmr"),
    (dict(rejection=[1.0]), "rejection"),
    (dict(genuine_quality=[np.nan, 1, 1, 1]), "genuine_quality"),
    (dict(genuine_quality=[1, 1]), "genuine_quality"),
])
def test_bad_inputs_name_the_argument(kw, needle):
    args = dict(genuine=GEN, impostor=IMP, genuine_quality=GEN_Q)
    args.update(kw)
    with pytest.raises(ValueError, match=needle):
        erc_pairs(**args)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from qme_ext import plots
    r = erc_pairs(GEN, IMP, GEN_Q, fmr=0.5)
    plots.plot_erc({"q": (r.rejected, r.fnmr)}, tmp_path / "erc.png")
    assert (tmp_path / "erc.png").stat().st_size > 1000


def test_demo_erc_compares_the_qe_with_the_face_quality():
    from qme_ext.cli.qme import demo_erc
    from qme_ext.datasets.synthetic import synthetic_wholebody
    data = synthetic_wholebody("mixed", seed=0, num_subjects=12, num_train_subjects=12,
                               num_val_subjects=6, num_unknown=3)
    test = data["test"]
    q_star = data["meta"]["test"]["q_star"]  # a perfect quality estimator's output
    out = demo_erc({"data": data, "quality_test": q_star})
    assert set(out) == {"QE", "face quality"}
    want = erc(test.score_mats["face"], test.q_pids, test.g_pids, test.quality["face_weights"],
               fmr=1e-3)
    np.testing.assert_array_equal(out["face quality"].fnmr, want.fnmr)
    assert out["QE"].definition == "fixed" and out["QE"].fmr == 1e-3
