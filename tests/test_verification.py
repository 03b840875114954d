"""tar_at_far (radix-select kernel) against the numpy reference and scikit-learn."""
import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
from qme_ext import metrics
from qme_ext.reference import tar_at_far_ref

FARS = (1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0)


def _check(res, ref):
    np.testing.assert_array_equal(res.tar, ref["tar"])
    np.testing.assert_array_equal(res.threshold, ref["threshold"])
    np.testing.assert_array_equal(res.achieved_far, ref["achieved_far"])
    assert res.num_genuine == ref["num_genuine"] and res.num_impostor == ref["num_impostor"]


@pytest.mark.parametrize("convention", ["qme", "conservative"])
@pytest.mark.parametrize("seed,ties,nan", [(0, True, 0.0), (1, False, 0.0), (2, True, 0.1),
                                           (3, False, 0.05)])
def test_matches_reference(device, convention, seed, ties, nan):
    S, ids = make_problem(seed, P=60, G=400, ties=ties, nan_frac=nan)
    res = metrics.tar_at_far(to_device(S, device), ids["q_pids"], ids["g_pids"], FARS, convention)
    _check(res, tar_at_far_ref(S, ids["q_pids"], ids["g_pids"], FARS, convention))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("convention", ["qme", "conservative"])
def test_every_dtype(device, dtype, convention):
    S, ids = make_problem(4, P=50, G=300, ties=False, dtype=np.float64)
    t = torch.from_numpy(S).to(dtype)
    rounded = t.to(torch.float64).numpy()
    res = metrics.tar_at_far(t.to(device), ids["q_pids"], ids["g_pids"], FARS, convention)
    _check(res, tar_at_far_ref(rounded, ids["q_pids"], ids["g_pids"], FARS, convention))


def test_equals_sklearn_roc_curve_first_point(device):
    sklearn = pytest.importorskip("sklearn.metrics")
    S, ids = make_problem(5, P=80, G=500, ties=False)
    labels = (ids["q_pids"][:, None] == ids["g_pids"][None, :]).ravel()
    fpr, tpr, thr = sklearn.roc_curve(labels, S.ravel().astype(np.float64), drop_intermediate=False)
    res = metrics.tar_at_far(to_device(S, device), ids["q_pids"], ids["g_pids"], FARS)
    for i, far in enumerate(FARS):
        idx = np.where(fpr >= far)[0][0]
        assert res.tar[i] == tpr[idx]
        assert res.threshold[i] == thr[idx]


def test_sklearn_default_roc_gives_the_same_tar(device):
    """The QME reference uses drop_intermediate=True: same TAR (thresholds may differ)."""
    sklearn = pytest.importorskip("sklearn.metrics")
    S, ids = make_problem(6, P=80, G=500, ties=False)
    labels = (ids["q_pids"][:, None] == ids["g_pids"][None, :]).ravel()
    fpr, tpr, _ = sklearn.roc_curve(labels, S.ravel())
    res = metrics.tar_at_far(to_device(S, device), ids["q_pids"], ids["g_pids"], (1e-3, 1e-2, 0.1))
    for i, far in enumerate((1e-3, 1e-2, 0.1)):
        assert res.tar[i] == tpr[np.where(fpr >= far)[0][0]]


def test_conservative_against_hand_computed_runs():
    # impostors: 5, 4, 4, 4, 3, 2 (N_imp = 6); genuine: 4.5, 4, 1
    S = np.array([[5, 4, 4, 4, 3, 2, 4.5, 4, 1]], dtype=np.float64)
    qp = np.array([1])
    gp = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    res = metrics.tar_at_far(S, qp, gp, fars=(1 / 6, 2 / 6, 4 / 6), convention="conservative")
    # far 1/6 -> t = 5 (FAR 1/6); far 2/6 -> the run of 4s would give 4/6 > 2/6 -> t = 5;
    # far 4/6 -> t = 4 (FAR exactly 4/6)
    np.testing.assert_array_equal(res.threshold, [5, 5, 4])
    np.testing.assert_allclose(res.achieved_far, [1 / 6, 1 / 6, 4 / 6])
    np.testing.assert_allclose(res.tar, [0, 0, 2 / 3])
    tiny = metrics.tar_at_far(S, qp, gp, fars=(0.1,), convention="conservative")
    assert tiny.threshold[0] == np.nextafter(5.0, np.inf) and tiny.achieved_far[0] == 0
    assert tiny.tar[0] == 0


def test_qme_convention_hand_computed():
    S = np.array([[5, 4, 4, 4, 3, 2, 4.5, 4, 1]], dtype=np.float32)
    gp = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    res = metrics.tar_at_far(S, [1], gp, fars=(0.01, 0.5))
    # k = 1 -> t = 5, TAR 0; k = 3 -> t = 4 -> genuine >= 4: 4.5, 4 -> 2/3
    np.testing.assert_array_equal(res.threshold, [5, 4])
    np.testing.assert_allclose(res.tar, [0, 2 / 3])


def test_all_nan_matrix_is_refused():
    """Issue 23: without a finite score the NaN rule alone would decide the TAR (100%)."""
    S = np.full((3, 4), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="scores: no finite score"):
        metrics.tar_at_far(S, [0, 1, 2], [0, 1, 5, 6], (0.5,))


def test_errors_name_the_problem():
    S = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="no genuine"):
        metrics.tar_at_far(S, [0, 1], [2, 3])
    with pytest.raises(ValueError, match="no impostor"):
        metrics.tar_at_far(S, [0, 0], [0, 0])
    with pytest.raises(ValueError, match="fars"):
        metrics.tar_at_far(S, [0, 1], [0, 1], fars=(0.0,))
    with pytest.raises(ValueError, match="convention"):
        metrics.tar_at_far(S, [0, 1], [0, 1], convention="bob")


@pytest.mark.parametrize("seed,ties", [(7, True), (8, False), (9, True)])
def test_conservative_equals_bob_measure(device, seed, ties):
    """bob.measure is the peer the conservative convention is named after.

    It pins numpy~=1.26, so it is not in the test extras; CONTRIBUTING.md says how to install it
    beside numpy 2 (``pip install numba && pip install --no-deps bob.measure``).
    """
    bob = pytest.importorskip("bob.measure")
    S, ids = make_problem(seed, P=70, G=450, ties=ties, dtype=np.float64)
    genuine_mask = ids["q_pids"][:, None] == ids["g_pids"][None, :]
    neg, pos = S[~genuine_mask], S[genuine_mask]
    fars = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0)
    res = metrics.tar_at_far(to_device(S, device), ids["q_pids"], ids["g_pids"], fars,
                             convention="conservative")
    for i, far in enumerate(fars):
        t_bob = bob.far_threshold(neg, pos, far)
        far_bob, frr_bob = bob.farfrr(neg, pos, t_bob)
        if far < 1.0:  # at far = 1 bob returns nextafter(min impostor, -inf), we the minimum itself
            assert res.threshold[i] == t_bob
        assert res.achieved_far[i] == far_bob
        # compare counts: 1 - frr in floating point is not the float of #accepted / N_gen
        assert round(res.tar[i] * pos.size) == pos.size - round(frr_bob * pos.size)
