"""larger_is_better=False (issue 21): a distance matrix (torchreid's distmat) gives the
report of its negation, thresholds in distance units; ties, NaN, +-inf and -0.0 mirrored.
evaluate, evaluate_file, verification and the engine's NegatedSource."""
import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics.orientation import is_threshold_key
from report_helpers import evaluation_inputs


def distance_inputs(seed=0, dtype=np.float32):
    """A distance matrix with ties, NaN, +-inf and both zeros, and its template matrix."""
    S, M, ids = evaluation_inputs(seed, dtype=dtype)
    D, DM = np.abs(S) * 2, np.abs(M) * 2  # ties (quantised), NaN kept
    D[0, :5] = 0.0
    D[0, 5] = -0.0
    D[1, 3] = np.inf
    D[2, 4] = -np.inf  # not a real distance, but a value the mirror must still handle
    DM[3, 0] = np.inf
    return D.astype(dtype), DM.astype(dtype), ids


def assert_negated_report(got: dict, want: dict) -> None:
    """`got` (distances) equals `want` (their negation) with thresholds negated, bit for bit."""
    assert list(got) == list(want)
    for k in want:
        w = want[k]
        if is_threshold_key(k):
            w = (-w[1], -w[0]) if k.endswith("_ci") else -w
        assert np.array_equal(np.float64(got[k]).view(np.int64),
                              np.float64(w).view(np.int64)), (k, got[k], w)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_distance_report_is_the_negation_report(dtype):
    D, DM, ids = distance_inputs(0, dtype)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        got = metrics.evaluate(D, DM, *ids, larger_is_better=False)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        want = metrics.evaluate(-D, -DM, *ids)
    assert_negated_report(got, want)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        assert_negated_report(metrics.evaluate(D, DM, *ids, larger_is_better=False,
                                               block_rows=4), want)


def test_distance_ranking_rules():
    # torchreid order: ascending distance, ties to the lower gallery index, NaN last
    D = np.array([[0.5, 0.2, 0.2, np.nan, np.inf, 0.0, -0.0]], dtype=np.float32)
    q, g = np.array([1]), np.array([0, 0, 1, 0, 0, 0, 0])
    # the one good entry (index 2) ties with index 1 (lower index first) and comes after
    # both zeros: 0-based position 3
    res = metrics.rank_metrics(-D, q, g, per_probe=True)
    assert res.first_pos[0] == 3
    D2 = D.copy()
    D2[0, 2] = np.nan  # a NaN distance ranks after +inf, NaNs among themselves by index
    assert metrics.rank_metrics(-D2, q, g, per_probe=True).first_pos[0] == 5
    D2[0, 3] = 1.0
    assert metrics.rank_metrics(-D2, q, g, per_probe=True).first_pos[0] == 6


def test_distance_report_with_intervals():
    D, DM, ids = distance_inputs(1)
    boot = dict(ci=0.9, n_boot=25, boot_seed=3)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        got = metrics.evaluate(D, DM, *ids, larger_is_better=False, **boot)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        want = metrics.evaluate(-D, -DM, *ids, **boot)
    assert_negated_report(got, want)
    for k in want.replicates:
        sign = -1 if is_threshold_key(k) else 1
        assert np.array_equal(got.replicates[k], sign * want.replicates[k], equal_nan=True), k
    with pytest.raises(TypeError, match="larger_is_better"):
        metrics.evaluate(D, DM, *ids, larger_is_better="no")


def test_distance_file_streamed(tmp_path):
    from qme_ext.io import ScoreSet, save_scores
    D, DM, ids = distance_inputs(2)
    D, DM = np.nan_to_num(D, posinf=9.0, neginf=-9.0), np.nan_to_num(DM, posinf=9.0)
    names = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids",
             "unique_g_pids")
    save_scores(tmp_path / "d.h5", ScoreSet(models=["reid"], score_mats={"reid": D},
                                           merge_score_mats={"reid": DM}, quality={},
                                           **dict(zip(names, ids))))
    want = metrics.evaluate(-D, -DM, *ids)
    got = metrics.evaluate_file(tmp_path / "d.h5", "reid", block_rows=5, larger_is_better=False)
    assert_negated_report(got, want)


def test_verification_of_distances():
    rng = np.random.default_rng(4)
    gen = np.round(rng.gamma(2.0, 0.3, 300), 2)
    imp = np.round(rng.gamma(5.0, 0.3, 2000), 2)
    imp[:3] = np.nan
    with pytest.warns(metrics.NonFiniteScoreWarning):
        got = metrics.verification(gen, imp, larger_is_better=False)
    with pytest.warns(metrics.NonFiniteScoreWarning):
        want = metrics.verification(-gen, -imp)
    assert got.eer == want.eer and got.eer_threshold == -want.eer_threshold
    assert got.eers == {k: (e, -t) for k, (e, t) in want.eers.items()}
    np.testing.assert_array_equal(got.fnmr_at_fmr, want.fnmr_at_fmr)
    np.testing.assert_array_equal(got.fmr_threshold, -want.fmr_threshold)
    np.testing.assert_array_equal(got.fnmr_threshold, -want.fnmr_threshold)
    np.testing.assert_array_equal(got.roc[2], -want.roc[2])
    assert got.auc == want.auc and got.d_prime == want.d_prime
    # a distance threshold accepts d <= t: FNMR at the reported FMR threshold
    t = got.fmr_threshold[-1]
    assert got.fnmr_at_fmr[-1] == np.count_nonzero(gen > t) / gen.size
    # scores + labels form, and torch input
    labels = np.concatenate([np.ones(gen.size, bool), np.zeros(imp.size, bool)])
    both = np.concatenate([gen, imp])
    got2 = metrics.verification(torch.from_numpy(both), labels=torch.from_numpy(labels),
                                larger_is_better=False, warn=False)
    assert got2.eer == got.eer and got2.eer_threshold == got.eer_threshold
