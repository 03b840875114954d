"""Tests of the pure-numpy reference metrics against peers (scikit-learn, the QME split recipe)
and against small cases worked out by hand."""

import math

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")  # a test extra
average_precision_score, roc_curve = sklearn_metrics.average_precision_score, sklearn_metrics.roc_curve

from qme_ext.reference import (det_ref, eer_ref, evaluate_ref, fnir_at_fpir_ref, numpy_splits,
                               qme_splits, rank_metrics_ref, roc_ref, tar_at_far_ref)


def _pairs(genuine, impostor):
    """A (N, 1) score matrix whose rows are the given genuine then impostor scores."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    scores = np.concatenate([genuine, impostor])[:, None]
    q_pids = np.array([0] * genuine.size + [1] * impostor.size)
    g_pids = np.array([0])
    return scores, q_pids, g_pids


# ----------------------------------------------------------------------------------- ranking
# One gallery of 6 entries (pid, cam, clothes) and two probes, worked out by hand below.
G_PIDS = np.array([1, 2, 1, 1, 3, 1])
G_CAMS = np.array([0, 1, 1, 1, 1, 2])
G_CLOTHES = np.array([0, 0, 1, 0, 1, 1])
Q_PIDS = np.array([1, 3])
Q_CAMS = np.array([0, 0])
Q_CLOTHES = np.array([0, 5])
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.85, 0.5, 0.4],  # order 0,3,1,2,4,5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # order 5,4,3,2,1,0
    ]
)


def _rank(mode):
    return rank_metrics_ref(
        SCORES, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, Q_CLOTHES, G_CLOTHES, mode=mode, max_rank=3
    )


def test_rank_general_hand():
    # probe 0: entry 0 is junk (same cam); list 3,1,2,4,5 has goods 3,2,5 at 0,2,4
    # probe 1: no junk; list 5,4,... has good 4 at 1
    r = _rank("general")
    ap0 = (1 / 1 + 2 / 3 + 3 / 5) / 3
    np.testing.assert_allclose(r["ap"], [ap0, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(r["first_pos"], [0, 1])
    np.testing.assert_allclose(r["cmc"], [0.5, 1.0, 1.0])
    assert r["mAP"] == pytest.approx((ap0 + 0.5) / 2, abs=1e-15)
    assert (r["num_valid"], r["num_skipped"]) == (2, 0)


def test_rank_cc_hand():
    # probe 0: junk = 0 (same cam) and 3 (same clothes); list 1,2,4,5, goods 2,5 at 1,3
    r = _rank("cc")
    np.testing.assert_allclose(r["ap"], [(1 / 2 + 2 / 4) / 2, 0.5], atol=1e-15)
    np.testing.assert_array_equal(r["first_pos"], [1, 1])
    np.testing.assert_allclose(r["cmc"], [0.0, 1.0, 1.0])
    assert r["mAP"] == pytest.approx(0.5)


def test_rank_sc_hand():
    # probe 0: junk = 0 (same cam), 2 and 5 (other clothes); list 3,1,4, good 3 at 0
    # probe 1: its only mate wears other clothes -> skipped
    r = _rank("sc")
    assert r["ap"][0] == 1.0 and np.isnan(r["ap"][1])
    np.testing.assert_array_equal(r["first_pos"], [0, -1])
    np.testing.assert_allclose(r["cmc"], [1.0, 1.0, 1.0])
    assert r["mAP"] == 1.0
    assert (r["num_valid"], r["num_skipped"]) == (1, 1)


def test_rank_modes_need_ids():
    with pytest.raises(ValueError):
        rank_metrics_ref(SCORES, Q_PIDS, G_PIDS, mode="cc")
    with pytest.raises(ValueError):
        rank_metrics_ref(SCORES, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, mode="sc")


def test_rank_no_valid_probe():
    r = rank_metrics_ref(SCORES, [7, 8], G_PIDS, max_rank=4)
    assert r["mAP"] == 0.0 and r["num_valid"] == 0 and r["num_skipped"] == 2
    np.testing.assert_array_equal(r["cmc"], np.zeros(4))


def test_rank_order_ties_nan_signed_zero():
    # ties: lower index first; NaN after -inf; -0.0 ties with +0.0
    row = np.array([[np.nan, -np.inf, 0.0, -0.0, 0.5, 0.5]])
    g = np.arange(6)
    # order: 4, 5, 2, 3, 1, 0
    expected = {4: 0, 5: 1, 2: 2, 3: 3, 1: 4, 0: 5}
    for idx, pos in expected.items():
        r = rank_metrics_ref(row, [idx], g, max_rank=6)
        assert r["first_pos"][0] == pos, idx
    # a -0.0 before a +0.0 in index order keeps its place
    r = rank_metrics_ref(np.array([[-0.0, 0.0]]), [1], [0, 1])
    assert r["first_pos"][0] == 1


def test_rank_matches_sort_free_counting_with_ties():
    # docs/definitions.rst, §2.1 sort-free form: p = #strictly higher + #equal at a lower index (junk excluded).
    # Long rows with heavy ties would expose an unstable sort (numpy quicksort for n > 16).
    rng = np.random.default_rng(8)
    P, G = 20, 200
    scores = np.round(rng.standard_normal((P, G)) * 2) / 2
    scores[rng.random((P, G)) < 0.05] = np.nan
    g_pids, q_pids = rng.integers(0, 5, G), rng.integers(0, 5, P)
    g_cams, q_cams = rng.integers(0, 2, G), rng.integers(0, 2, P)
    r = rank_metrics_ref(scores, q_pids, g_pids, q_cams, g_cams, max_rank=G)
    for i in range(P):
        s = np.where(np.isnan(scores[i]), -np.inf, scores[i])
        nan = np.isnan(scores[i])
        good = (g_pids == q_pids[i]) & (g_cams != q_cams[i])
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i])
        idx = np.arange(G)
        pos = []
        for j in np.flatnonzero(good):
            if nan[j]:  # a NaN entry trails every number and the NaNs before it
                ahead = ~nan | (nan & (idx < j))
            else:
                ahead = ~nan & ((s > s[j]) | ((s == s[j]) & (idx < j)))
            pos.append(np.sum(ahead & ~junk))
        pos = np.sort(pos)
        ap = np.mean(np.arange(1, len(pos) + 1) / (pos + 1.0))
        assert r["first_pos"][i] == pos[0]
        assert r["ap"][i] == pytest.approx(ap, rel=1e-12)


def test_rank_ap_matches_sklearn():
    rng = np.random.default_rng(0)
    P, G = 30, 80
    scores = rng.standard_normal((P, G))  # continuous: tie-free
    g_pids = rng.integers(0, 10, G)
    q_pids = rng.integers(0, 12, P)  # some probes have no mate
    r = rank_metrics_ref(scores, q_pids, g_pids, max_rank=G)
    aps = []
    for i in range(P):
        y = g_pids == q_pids[i]
        if not y.any():
            assert np.isnan(r["ap"][i]) and r["first_pos"][i] == -1
            continue
        sk = average_precision_score(y, scores[i])
        assert r["ap"][i] == pytest.approx(sk, rel=1e-12)
        aps.append(sk)
        # CMC position: number of gallery entries ahead of the best mate
        assert r["first_pos"][i] == np.sum(scores[i] > scores[i][y].max())
    assert r["mAP"] == pytest.approx(np.mean(aps), rel=1e-12)
    assert r["num_valid"] == len(aps)


# ------------------------------------------------------------------------------ verification
def _sklearn_tar_at_far(scores, q_pids, g_pids, fars):
    """The QME reference recipe: roc_curve, then the first point with fpr >= far."""
    s = scores.astype(np.float64).ravel().copy()
    nan = np.isnan(s)
    s[nan] = s[~nan].min()
    y = (q_pids[:, None] == g_pids[None, :]).ravel()
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    idx = [np.flatnonzero(fpr >= f)[0] for f in fars]
    return tpr[idx], thr[idx]


@pytest.mark.parametrize("P,G,seed", [(50, 300, 1), (10, 11, 2), (7, 20, 3)])
def test_tar_at_far_qme_matches_sklearn(P, G, seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((P, G)).astype(np.float32)
    q_pids = rng.integers(0, 8, P)
    g_pids = rng.integers(0, 8, G)
    scores[q_pids[:, None] == g_pids[None, :]] += 1.0
    scores[0, 0] = np.nan  # becomes the matrix minimum, as in the reference
    fars = (1e-4, 1e-3, 1e-2, 0.07, 0.3, 0.5, 1.0)
    r = tar_at_far_ref(scores, q_pids, g_pids, fars, convention="qme")
    tar, thr = _sklearn_tar_at_far(scores, q_pids, g_pids, fars)
    np.testing.assert_array_equal(r["tar"], tar)
    np.testing.assert_array_equal(r["threshold"], thr)
    assert r["threshold"].dtype == np.float64
    same = q_pids[:, None] == g_pids[None, :]
    assert r["num_genuine"] == same.sum() and r["num_impostor"] == (~same).sum()


def test_tar_at_far_float_rounding_of_k():
    # 0.07 * 100 == 7.000000000000001 in float64, yet 7/100 >= 0.07, so k must be 7 not 8
    imp = np.arange(100, dtype=np.float64)
    r = tar_at_far_ref(*_pairs([50.5], imp), fars=[0.07])
    assert r["threshold"][0] == 93.0
    assert r["achieved_far"][0] == 0.07


# genuine and impostor scores with runs of ties, for both conventions
TIE_GEN = [5.0, 4.5, 4.0, 0.5]
TIE_IMP = [5.0, 5.0, 4.0, 4.0, 4.0, 3.0, 2.0, 2.0, 1.0, 1.0]


def test_tar_at_far_conservative_ties_hand():
    fars = [0.1, 0.2, 0.45, 0.5, 1.0]
    r = tar_at_far_ref(*_pairs(TIE_GEN, TIE_IMP), fars=fars, convention="conservative")
    above5 = np.nextafter(5.0, np.inf)
    # 0.1: even the top run of two 5s gives 0.2 > 0.1 -> just above the maximum
    np.testing.assert_array_equal(r["threshold"], [above5, 5.0, 5.0, 4.0, 1.0])
    np.testing.assert_allclose(r["achieved_far"], [0.0, 0.2, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(r["tar"], [0.0, 0.25, 0.25, 0.75, 0.75])


def test_tar_at_far_qme_ties_hand():
    # k = 1, 2, 5, 5, 10 -> 1st, 2nd, 5th, 5th, 10th largest impostor
    fars = [0.1, 0.2, 0.45, 0.5, 1.0]
    r = tar_at_far_ref(*_pairs(TIE_GEN, TIE_IMP), fars=fars, convention="qme")
    np.testing.assert_array_equal(r["threshold"], [5.0, 5.0, 4.0, 4.0, 1.0])
    np.testing.assert_allclose(r["achieved_far"], [0.2, 0.2, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(r["tar"], [0.25, 0.25, 0.75, 0.75, 0.75])


def test_tar_at_far_needs_both_classes():
    with pytest.raises(ValueError):
        tar_at_far_ref(np.ones((2, 2)), [0, 0], [0, 0])
    with pytest.raises(ValueError):
        tar_at_far_ref(np.ones((2, 2)), [0, 0], [1, 1])


def test_roc_det_match_sklearn():
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((12, 15)), 1)  # rounded: plenty of ties
    q_pids = rng.integers(0, 4, 12)
    g_pids = rng.integers(0, 4, 15)
    far, tar, thr = roc_ref(scores, q_pids, g_pids)
    y = (q_pids[:, None] == g_pids[None, :]).ravel()
    fpr, tpr, sk_thr = roc_curve(y, scores.ravel(), drop_intermediate=False)
    # sklearn prepends a threshold above every score with (0, 0)
    np.testing.assert_array_equal(thr, sk_thr[1:])
    np.testing.assert_allclose(far, fpr[1:], atol=1e-15)
    np.testing.assert_allclose(tar, tpr[1:], atol=1e-15)
    far2, frr = det_ref(scores, q_pids, g_pids)
    np.testing.assert_array_equal(far2, far)
    np.testing.assert_allclose(frr, 1.0 - tar)


def test_eer_separable_is_zero():
    eer, t = eer_ref(*_pairs([0.9, 0.8], [0.1, 0.2, 0.3]))
    assert eer == 0.0
    assert t == pytest.approx(0.55)


def test_eer_hand():
    # candidates 0.5: FAR 1/3 (0.7), FRR 1/3 (0.2) -> |gap| 0
    eer, t = eer_ref(*_pairs([0.2, 0.6, 0.8], [0.1, 0.4, 0.7]))
    assert eer == pytest.approx(1 / 3)
    assert t == pytest.approx(0.5)


def test_eer_first_of_tied_gaps():
    # t=0.15: FAR 1/2, FRR 0; t=0.25: FAR 1/2, FRR 1 -> both |gap| 1/2, take the lower t
    eer, t = eer_ref(*_pairs([0.2], [0.1, 0.3]))
    assert t == pytest.approx(0.15)
    assert eer == pytest.approx(0.25)


# --------------------------------------------------------------------------------- open set
def test_qme_splits_reproduce_reference_recipe():
    ids = np.arange(100, 137) * 3
    np.random.seed(123)
    before = np.random.get_state()
    got = qme_splits(ids)
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])

    np.random.seed(45)
    want = [np.sort(np.random.choice(ids, int(len(ids) * 0.8), replace=False)) for _ in range(10)]
    assert len(got) == 10
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    # the caller's stream continues as if qme_splits had never run
    np.random.set_state(before)
    x = np.random.random()
    np.random.set_state(after)
    assert np.random.random() == x


def test_numpy_splits():
    ids = np.arange(20)
    got = numpy_splits(ids, n_splits=3, keep_fraction=0.5, seed=7)
    rng = np.random.default_rng(7)
    for s in got:
        np.testing.assert_array_equal(s, np.sort(rng.choice(ids, 10, replace=False)))


SUBJECTS = np.array([10, 20, 30, 40])
OS_PIDS = np.array([10, 20, 30, 40, 50])
OS_SCORES = np.array(
    [
        [0.9, 0.5, 0.1, 0.95],  # pid 10
        [0.7, 0.7, 0.2, 0.0],  # pid 20: tie with subject 10 at rank 1
        [0.1, 0.2, 0.6, 0.0],  # pid 30
        [0.3, 0.65, 0.1, 0.99],  # pid 40
        [0.2, 0.1, 0.4, 0.0],  # pid 50: never enrolled
    ]
)
OS_SPLITS = [np.array([10, 20, 30]), np.array([10, 20, 40])]


def test_fnir_hand():
    r = fnir_at_fpir_ref(OS_SCORES, OS_PIDS, SUBJECTS, fpirs=(0.1, 0.5, 1.0), splits=OS_SPLITS)
    # split 0: non-mated maxima (pids 40, 50) 0.65, 0.4; hits: pid 10 always, pid 30 (0.6)
    #   only at t=0.4, pid 20 never (tie)
    # split 1: non-mated maxima (pids 30, 50) 0.2, 0.2; pid 10 loses to 40's column, pid 20
    #   ties, pid 40 hits
    np.testing.assert_allclose(r["tpir"], [[1 / 3, 1 / 3, 2 / 3], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(r["fnir"], 1.0 - r["tpir"])
    np.testing.assert_allclose(
        r["threshold"], [[0.65 + 1e-8, 0.65, 0.4], [0.2 + 1e-8, 0.2, 0.2]], rtol=0, atol=1e-15
    )
    np.testing.assert_allclose(r["tpir_mean"], [1 / 3, 1 / 3, 1 / 2])
    np.testing.assert_allclose(r["tpir_std"], [0.0, 0.0, (1 / 3) / math.sqrt(2)], atol=1e-15)
    np.testing.assert_allclose(r["fnir_std"], r["tpir_std"])


def test_fnir_rank2_counts_the_tie():
    r = fnir_at_fpir_ref(
        OS_SCORES, OS_PIDS, SUBJECTS, fpirs=(1.0,), splits=OS_SPLITS[:1], rank=2
    )
    np.testing.assert_allclose(r["tpir"], [[1.0]])
    assert np.isnan(r["tpir_std"][0])  # one split: no sample std


def test_fnir_nan_scores():
    s = OS_SCORES.copy()
    s[0, 0] = np.nan  # pid 10's genuine score is missing: never a hit
    s[2, 0] = np.nan  # a missing impostor column does not stop pid 30
    r = fnir_at_fpir_ref(s, OS_PIDS, SUBJECTS, fpirs=(1.0,), splits=OS_SPLITS[:1])
    np.testing.assert_allclose(r["tpir"], [[1 / 3]])


def test_fnir_split_errors_name_the_split():
    with pytest.raises(ValueError, match="split 1"):
        # pids 10..40 only: enrolling every subject leaves no non-mated probe
        fnir_at_fpir_ref(OS_SCORES[:4], OS_PIDS[:4], SUBJECTS, splits=[OS_SPLITS[0], SUBJECTS])
    with pytest.raises(ValueError, match="split 0"):
        fnir_at_fpir_ref(OS_SCORES[:1], OS_PIDS[:1], SUBJECTS, splits=[np.array([20, 30])])


def test_fnir_default_splits_are_qme_splits():
    rng = np.random.default_rng(5)
    subjects = np.arange(1, 21)
    q = rng.integers(1, 21, 60)
    m = rng.standard_normal((60, 20))
    r = fnir_at_fpir_ref(m, q, subjects, seed=45)
    for a, b in zip(r["splits"], qme_splits(subjects, seed=45)):
        np.testing.assert_array_equal(a, b)
    assert r["fnir"].shape == (10, 3)


# ------------------------------------------------------------------------------- the report
def test_evaluate_ref_keys_and_consistency():
    rng = np.random.default_rng(6)
    P, G, n_sub = 40, 60, 10
    g_pids = rng.integers(0, n_sub, G).astype(np.float32)  # ids arrive as floats
    q_pids = rng.integers(0, n_sub, P).astype(np.float32)
    g_cams, q_cams = rng.integers(0, 3, G), rng.integers(0, 3, P)
    g_clo, q_clo = rng.integers(0, 2, G), rng.integers(0, 2, P)
    S = rng.standard_normal((P, G))
    uniq = np.arange(n_sub)
    M = rng.standard_normal((P, n_sub))
    out = evaluate_ref(S, M, q_pids, q_cams, q_clo, g_pids, g_cams, g_clo, uniq, seed=45)

    pct = ["0.01%", "0.10%", "1.00%"]
    keys = [f"{m}_{k}" for m in ("GR", "SC", "CC") for k in ("top1", "top5", "top10", "top20", "mAP", "mINP",
                                                         "RP", "MAP@R")]
    keys += [f"TAR@{p}FAR" for p in pct] + [f"Threshold@{p}FAR" for p in pct]
    keys += [f"TPIR@{p}FPIR" for p in pct] + [f"FNIR@{p}FPIR" for p in pct]
    keys += [f"FNIR@{p}FPIR_threshold" for p in pct]
    keys += ["num_probe_templates", "num_probe_subjects", "num_gallery_subjects",
             "num_galley1_templates", "num_gallary1_subjects"]
    keys += [f"TPIR@{p}FPIR_std" for p in pct] + [f"FNIR@{p}FPIR_std" for p in pct]
    assert list(out) == keys

    cc = rank_metrics_ref(S, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode="cc")
    assert out["CC_top5"] == cc["cmc"][4] and out["CC_mAP"] == cc["mAP"]
    v = tar_at_far_ref(S, q_pids, g_pids)
    assert out["TAR@1.00%FAR"] == v["tar"][2]
    assert out["Threshold@0.01%FAR"] == v["threshold"][0]
    o = fnir_at_fpir_ref(M, q_pids, uniq, seed=45)
    assert out["FNIR@1.00%FPIR"] == o["fnir_mean"][2]
    assert out["TPIR@0.10%FPIR_std"] == o["tpir_std"][1]
    assert out["FNIR@0.01%FPIR_threshold"] == o["threshold"][:, 0].mean()
    assert out["num_probe_templates"] == P and out["num_gallery_subjects"] == n_sub
    assert out["num_galley1_templates"] == out["num_gallary1_subjects"] == 8
    assert out["num_probe_subjects"] == np.unique(q_pids).size
