"""Bootstrap intervals and paired comparisons (issue 12): the weighted replicates equal
the metrics of the explicitly resampled matrices, are deterministic and independent of
block sizes and thread counts, leave the point values unchanged, and cover."""
import numpy as np
import pytest

import qme_ext
from qme_ext import bootstrap, metrics
from report_helpers import assert_same_report, evaluation_inputs

N_BOOT = 40


def _resampled(S, M, args, w_probe):
    """The inputs with probe row p repeated w_probe[p] times (gallery unchanged)."""
    rows = np.repeat(np.arange(S.shape[0]), w_probe.astype(np.int64))
    q_pids, q_cam, q_clo, g_pids, g_cam, g_clo, uniq = args
    return S[rows], M[rows], (q_pids[rows], q_cam[rows], q_clo[rows], g_pids, g_cam, g_clo, uniq)


def _point_keys(rep):
    return [k for k in rep if not k.endswith("_ci")]


@pytest.mark.parametrize("unit", ["subject", "probe"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replicates_equal_resampled_matrix(unit, dtype):
    S, M, args = evaluation_inputs(3, P=60, G=240, n_ids=15, dtype=dtype)
    rep = metrics.evaluate(S, M, *args, ci=0.9, n_boot=N_BOOT, boot_seed=7, boot_unit=unit)
    W = bootstrap.Weights.of(bootstrap.options(0.9, N_BOOT, 7, unit), args[0])
    Wp = W.Wp
    checked = 0
    for b in range(N_BOOT):
        Sb, Mb, ab = _resampled(S, M, args, Wp[b])
        try:
            want = metrics.evaluate(Sb, Mb, *ab)
        except ValueError:  # a resample without a mated/non-mated probe in some split
            continue
        checked += 1
        for k, v in rep.replicates.items():
            got = v[b]
            if k.startswith(("TAR", "Threshold")) or "top" in k:
                assert got == want[k], (b, k, got, want[k])  # counts and order statistics
            else:
                assert got == pytest.approx(want[k], abs=1e-12, rel=1e-12), (b, k)
    assert checked >= N_BOOT // 2


def test_point_values_unchanged_and_intervals_bracket():
    S, M, args = evaluation_inputs(5, P=50, G=200)
    plain = metrics.evaluate(S, M, *args)
    rep = metrics.evaluate(S, M, *args, ci=0.95, n_boot=50)
    assert_same_report({k: rep[k] for k in _point_keys(rep)}, plain)
    assert set(rep.replicates) and all(k + "_ci" in rep for k in rep.replicates)
    for k in rep.replicates:
        lo, hi = rep[k + "_ci"]
        assert lo <= hi


def test_deterministic_across_blocks_and_threads():
    S, M, args = evaluation_inputs(8, P=45, G=180)
    ref = metrics.evaluate(S, M, *args, ci=0.95, n_boot=30, boot_seed=3)
    old = qme_ext.get_num_threads() if hasattr(qme_ext, "get_num_threads") else None
    for block_rows, threads in ((7, 1), (1, 2), (None, 4)):
        qme_ext.set_num_threads(threads)
        try:
            got = metrics.evaluate(S, M, *args, ci=0.95, n_boot=30, boot_seed=3,
                                   block_rows=block_rows)
        finally:
            if old is not None:
                qme_ext.set_num_threads(old)
        assert list(got) == list(ref)
        for k in ref:
            assert np.array_equal(np.asarray(got[k]), np.asarray(ref[k]), equal_nan=True), k
        for k in ref.replicates:
            assert np.array_equal(got.replicates[k], ref.replicates[k], equal_nan=True), k
    other = metrics.evaluate(S, M, *args, ci=0.95, n_boot=30, boot_seed=4)
    assert not np.array_equal(other.replicates["GR_mAP"], ref.replicates["GR_mAP"])


def test_weights_counter_based():
    w = bootstrap.replicate_weights(np.array([5, 9, -3, 5]), 2000, 11)
    assert np.array_equal(w[:, 0], w[:, 3])  # same unit, same weight
    sub = bootstrap.replicate_weights(np.array([-3]), 2000, 11)
    assert np.array_equal(sub[:, 0], w[:, 2])  # independent of the other units
    assert abs(w.mean() - 1.0) < 0.05 and abs(w.var() - 1.0) < 0.1  # Poisson(1)


def test_compare_paired():
    S, M, args = evaluation_inputs(9, P=50, G=200)
    rng = np.random.default_rng(0)
    S2 = (S + rng.normal(scale=0.5, size=S.shape)).astype(S.dtype)
    a = metrics.evaluate(S, M, *args, ci=0.95, n_boot=60)
    b = metrics.evaluate(S2, M, *args, ci=0.95, n_boot=60)
    cmp = metrics.compare(a, b)
    self_cmp = metrics.compare(a, a)
    for k, r in cmp.items():
        assert r["diff"] == a[k] - b[k]
        assert 0.0 <= r["p_value"] <= 1.0
        assert self_cmp[k]["ci"] == (0.0, 0.0) and self_cmp[k]["diff"] == 0.0
    with pytest.raises(ValueError, match="different bootstrap options"):
        metrics.compare(a, metrics.evaluate(S, M, *args, ci=0.95, n_boot=60, boot_seed=1))
    with pytest.raises(ValueError, match="ci=..."):
        metrics.compare(a, metrics.evaluate(S, M, *args))


def test_options_validated():
    S, M, args = evaluation_inputs(1)
    for bad in ({"ci": 1.5}, {"ci": 0.9, "n_boot": 1}, {"ci": 0.9, "boot_unit": "gallery"}):
        with pytest.raises(ValueError):
            metrics.evaluate(S, M, *args, **bad)
