"""Bootstrap intervals and paired comparisons (issue 12): the weighted replicates equal
the metrics of the explicitly resampled matrices, are deterministic and independent of
block sizes and thread counts, leave the point values unchanged, and cover."""
import numpy as np
import pytest

import qme_ext
from qme_ext.metrics import bootstrap
from qme_ext import metrics
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
@pytest.mark.parametrize("size", [(60, 240, 15), (16, 40, 5)])  # the small one: every
def test_replicates_equal_resampled_matrix(unit, dtype, size):  # impostor is gathered
    P, G, n_ids = size
    S, M, args = evaluation_inputs(3, P=P, G=G, n_ids=n_ids, dtype=dtype)
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


def test_single_metric_functions_match_evaluate():
    S, M, args = evaluation_inputs(4, P=50, G=200)
    q_pids, q_cam, q_clo, g_pids, g_cam, g_clo, uniq = args
    kw = dict(ci=0.9, n_boot=50, boot_seed=2)
    rep = metrics.evaluate(S, M, *args, **kw)
    rk = metrics.rank_metrics(S, q_pids, g_pids, q_cam, g_cam, q_clo, g_clo, **kw)
    assert metrics.rank_metrics(S, q_pids, g_pids, q_cam, g_cam, q_clo, g_clo).cmc_ci is None
    assert tuple(rk.cmc_ci[0]) == rep["GR_top1_ci"] and rk.mAP_ci == rep["GR_mAP_ci"]
    tr = metrics.tar_at_far(S, q_pids, g_pids, **kw)
    assert tuple(tr.tar_ci[2]) == rep["TAR@1.00%FAR_ci"]
    assert tuple(tr.threshold_ci[0]) == rep["Threshold@0.01%FAR_ci"]
    osr = metrics.fnir_at_fpir(M, q_pids, uniq, **kw)
    assert tuple(osr.fnir_mean_ci[1]) == rep["FNIR@0.10%FPIR_ci"]
    with pytest.raises(NotImplementedError, match="convention"):
        metrics.tar_at_far(S, q_pids, g_pids, convention="conservative", **kw)


def _clustered_set(rng, n_subj=40, per=3, p_mean=0.7, conc=4.0):
    """A test set whose population Rank-1 is p_mean and TAR@1%FAR is known: subject s has
    hit probability p_s ~ Beta (probes of a subject are correlated), impostors N(0, 1),
    genuine scores N(mu_s, 1) with mu_s ~ N(2, 0.5^2)."""
    G = n_subj
    g_pids = np.arange(G)
    q_pids = np.repeat(np.arange(n_subj), per)
    P = q_pids.size
    S = rng.standard_normal((P, G))
    p_s = rng.beta(p_mean * conc, (1 - p_mean) * conc, n_subj)
    mu = rng.normal(2.0, 0.5, n_subj)
    gen = rng.normal(mu[q_pids], 1.0)
    hit = rng.random(P) < p_s[q_pids]
    # rank-1 decided by `hit` alone: the genuine score is shifted above/below the row's
    # impostors while its verification score stays the draw
    rows = np.arange(P)
    S[rows, q_pids] = np.nan
    imp_max = np.nanmax(S, axis=1)
    S[rows, q_pids] = gen
    # scores used for verification: the draws; rank-1 via a separate matrix
    R = S.copy()
    R[rows, q_pids] = np.where(hit, imp_max + 1.0, -10.0)
    return S, R, q_pids, g_pids


def test_coverage_known_truth():
    """The 95% subject-bootstrap interval covers the population value in ~95% of
    simulated test sets (Rank-1 and TAR@1%FAR)."""
    from scipy.stats import norm  # noqa: F401  (scikit-learn's dependency)
    rng = np.random.default_rng(12)
    n_sets, n_boot = 100, 200
    z = norm.ppf(0.99)
    tar_true = 1.0 - norm.cdf((z - 2.0) / np.sqrt(1.0 + 0.25))
    cover_r1 = cover_tar = 0
    for _ in range(n_sets):
        S, R, q_pids, g_pids = _clustered_set(rng)
        r = metrics.rank_metrics(R, q_pids, g_pids, max_rank=1, ci=0.95, n_boot=n_boot,
                                 boot_seed=int(rng.integers(1 << 30)))
        lo, hi = r.cmc_ci[0]
        cover_r1 += lo <= 0.7 <= hi
        t = metrics.tar_at_far(S, q_pids, g_pids, fars=[0.01], ci=0.95, n_boot=n_boot,
                               boot_seed=int(rng.integers(1 << 30)))
        lo, hi = t.tar_ci[0]
        cover_tar += lo <= tar_true <= hi
    # binomial sd at 95% over 100 sets: 2.2 points; percentile intervals with 40
    # subjects run slightly narrow, so the band is asymmetric
    for name, c in (("Rank-1", cover_r1), ("TAR@1%FAR", cover_tar)):
        print(f"coverage {name}: {c / n_sets:.2f}")
        assert 0.87 <= c / n_sets <= 1.0, (name, c / n_sets)


@pytest.mark.parametrize("buckets", [1024, 3])  # 3: the in-bucket scan decides
@pytest.mark.parametrize("unit", ["subject", "probe"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eer_replicates_equal_resampled_matrix(monkeypatch, buckets, unit, dtype):
    monkeypatch.setattr(bootstrap, "_BUCKETS", buckets)
    for seed, (P, G, n_ids) in ((0, (30, 120, 8)), (2, (16, 40, 5))):
        S, _, args = evaluation_inputs(seed, P=P, G=G, n_ids=n_ids, dtype=dtype)  # ties, NaN
        q, g = args[0], args[3]
        res = metrics.eer(S, q, g, ci=0.9, n_boot=N_BOOT, boot_seed=1, boot_unit=unit)
        e, t = res
        assert (e, t) == metrics.eer(S, q, g)  # the point value is unchanged
        lo, hi = res.eer_ci
        assert lo <= hi
        Wp = bootstrap.Weights.of(bootstrap.options(0.9, N_BOOT, 1, unit), q).Wp
        for b in range(N_BOOT):
            rows = np.repeat(np.arange(P), Wp[b].astype(np.int64))
            try:
                want = metrics.eer(S[rows], q[rows], g)[0]
            except ValueError:  # no genuine or no impostor pair left
                assert np.isnan(res.replicates[b])
                continue
            assert res.replicates[b] == want, (seed, b)
