"""Verification of genuine/impostor vectors (qme_ext.metrics.verification), the pair-file
readers (qme_ext.io.load_pairs) and ``qme-ext verify``; peers: pyeer, scikit-learn,
bob.measure (each skipped when not installed)."""
import json
import warnings

import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics import verification
from qme_ext.verification import NonFiniteScoreWarning


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
    r2 = verification(s, y)
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
        verification([1.0, 2.0], np.array([True, True]))


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
