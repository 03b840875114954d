"""Property tests: every public metric against the literal numpy reference.

Random shapes (1 x 1 upwards; empty matrices must raise a clear error), ties,
NaN / +-inf / -0.0, duplicate ids, every score dtype (half precision compared
with the float64 reference on the same rounded values), numpy or torch,
contiguous, transposed, strided and negative-stride views. Counts and
thresholds must be equal; only sums of fractions (AP, mAP) get 1e-12.
Profile: tests/conftest.py ("ci": reproducible, about a minute in all).
"""
import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")  # a test extra; the GPU machine may lack it
from hypothesis import event, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from layouts import id_container
from property_strategies import ID_KINDS, ids, matrices
from qme_ext import metrics
from qme_ext.reference import (det_ref, eer_ref, evaluate_ref, fnir_at_fpir_ref, rank_metrics_ref,
                               roc_ref, tar_at_far_ref)


def both_or_neither(api, ref):
    """Run api() and ref(); either both raise ValueError or both return (api_out, ref_out)."""
    try:
        expected = ref()
    except ValueError:
        event("both refuse")
        with pytest.raises(ValueError):
            api()
        return None
    event("compared")
    return api(), expected


def assert_fields_equal(res, ref: dict, *names):
    """Result fields equal to the reference's entries, element for element (NaN == NaN)."""
    for n in names:
        np.testing.assert_array_equal(getattr(res, n), ref[n], err_msg=n)


def pair_counts(q, g):
    same = np.asarray(q)[:, None] == np.asarray(g)[None, :]
    return int(same.sum()), int((~same).sum())


@st.composite
def rates(draw, n: int):
    """1-4 rates in (0, 1]: common ones, k/n exactly and its float neighbours, arbitrary."""
    def one(kind):
        if kind == "common":
            return draw(st.sampled_from([1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]))
        if kind == "any":
            return draw(st.floats(1e-9, 1.0, exclude_min=True))
        k = draw(st.integers(1, max(n, 1)))
        v = k / max(n, 1)
        if kind == "below":
            v = np.nextafter(v, 0.0)
        elif kind == "above":
            v = min(1.0, np.nextafter(v, 2.0))
        return float(v)
    kinds = draw(st.lists(st.sampled_from(["common", "any", "exact", "below", "above"]),
                          min_size=1, max_size=4))
    return [one(k) for k in kinds]


@st.composite
def scored_pairs(draw, device, max_p=8, max_g=20, max_ids=6):
    """A (P, G) score matrix with probe and gallery pids (few ids: duplicates, many
    genuine pairs, sometimes none)."""
    P, G = draw(st.integers(1, max_p)), draw(st.integers(1, max_g))
    n_ids = draw(st.integers(1, max_ids))
    return draw(matrices(P, G, device=device)), draw(ids(P, n_ids)), draw(ids(G, n_ids))


# ---------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------
@given(data=st.data())
def test_rank_metrics(device, data):
    m, qp, gp = data.draw(scored_pairs(device, 10, 24, 5))
    P, G = m.rounded.shape
    cams = (data.draw(ids(P, 3)), data.draw(ids(G, 3)))
    clothes = (data.draw(ids(P, 2)), data.draw(ids(G, 2)))
    mode = data.draw(st.sampled_from(["nocam", "general", "cc", "sc"]))
    max_rank = data.draw(st.integers(1, 25))
    kind = data.draw(ID_KINDS)
    ref_ids = (qp, gp) + ((None,) * 4 if mode == "nocam" else cams + clothes)
    api_ids = [None if v is None else id_container(v, kind, device) for v in ref_ids]
    mode = "general" if mode == "nocam" else mode
    res = metrics.rank_metrics(m.obj, *api_ids, mode=mode, max_rank=max_rank, per_probe=True)
    ref = rank_metrics_ref(m.rounded, *ref_ids, mode=mode, max_rank=max_rank)
    assert_fields_equal(res, ref, "num_valid", "num_skipped", "first_pos", "cmc")
    np.testing.assert_allclose(res.ap, ref["ap"], rtol=0, atol=1e-12)
    assert abs(res.mAP - ref["mAP"]) <= 1e-12
    np.testing.assert_array_equal(
        metrics.cmc_curve(m.obj, *api_ids, mode=mode, max_rank=max_rank), res.cmc)
    if m.dtype in (torch.float16, torch.bfloat16):  # bit for bit the float32 path
        r32 = metrics.rank_metrics(torch.from_numpy(m.rounded).float().to(device), *api_ids,
                                   mode=mode, max_rank=max_rank, per_probe=True)
        np.testing.assert_array_equal(res.ap, r32.ap)
        assert res.mAP == r32.mAP


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------
@given(data=st.data(), convention=st.sampled_from(["qme", "conservative"]))
def test_tar_at_far(device, data, convention):
    m, qp, gp = data.draw(scored_pairs(device))
    fars = data.draw(rates(pair_counts(qp, gp)[1]))
    kind = data.draw(ID_KINDS)
    out = both_or_neither(
        lambda: metrics.tar_at_far(m.obj, id_container(qp, kind, device),
                                   id_container(gp, kind, device), fars, convention),
        lambda: tar_at_far_ref(m.rounded, qp, gp, fars, convention))
    if out is None:
        return
    assert_fields_equal(*out, "threshold", "tar", "achieved_far", "num_genuine", "num_impostor")


@given(data=st.data())
def test_roc_det_eer(device, data):
    m, qp, gp = data.draw(scored_pairs(device))
    out = both_or_neither(lambda: metrics.roc(m.obj, qp, gp), lambda: roc_ref(m.rounded, qp, gp))
    if out is None:
        return
    (far, tar, thr), (rfar, rtar, rthr) = out
    np.testing.assert_array_equal(thr, rthr)
    np.testing.assert_array_equal(far, rfar)
    np.testing.assert_array_equal(tar, rtar)
    dfar, frr = metrics.det(m.obj, qp, gp)
    rdfar, rfrr = det_ref(m.rounded, qp, gp)
    np.testing.assert_array_equal(dfar, rdfar)
    np.testing.assert_array_equal(frr, rfrr)
    e, t = metrics.eer(m.obj, qp, gp)
    re_, rt = eer_ref(m.rounded, qp, gp)
    assert (e, t) == (re_, rt)


# ---------------------------------------------------------------------------
# open-set identification
# ---------------------------------------------------------------------------
@st.composite
def openset_problem(draw, device):
    """(P, C) merge matrix, probe pids (enrolled subjects, unknown 900/901, duplicates),
    C unique subject ids. Mostly every subject is probed and an unknown probe exists, so
    that every split has mated and non-mated probes; otherwise pids are drawn freely."""
    C = draw(st.integers(1, 7))
    subjects = np.sort(draw(st.permutations(list(range(3, 40))))[:C]).astype(np.int64)
    pool = np.concatenate([subjects, [900, 901]])
    q = pool[draw(ids(draw(st.integers(1, 12)), pool.size))]
    if draw(st.integers(0, 3)):
        q = np.concatenate([subjects, [900], q])
    return draw(matrices(q.size, C, device=device)), q, subjects


@given(data=st.data())
def test_fnir_at_fpir(device, data):
    m, q, subjects = data.draw(openset_problem(device))
    fpirs = data.draw(rates(m.rounded.shape[0]))
    rank = data.draw(st.integers(1, 3))
    if data.draw(st.booleans()):  # explicit splits: random non-empty subsets of the subjects
        n = data.draw(st.integers(1, 3))
        kw = dict(splits=[])
        for _ in range(n):
            mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=subjects.size,
                                                 max_size=subjects.size)))
            mask[data.draw(st.integers(0, subjects.size - 1))] = True
            kw["splits"].append(subjects[mask])
    else:
        kw = dict(n_splits=data.draw(st.integers(1, 3)),
                  keep_fraction=data.draw(st.sampled_from([0.3, 0.5, 0.8, 1.0])),
                  seed=data.draw(st.integers(0, 2**31 - 1)),
                  split_rng=data.draw(st.sampled_from(["qme", "numpy"])))
    out = both_or_neither(
        lambda: metrics.fnir_at_fpir(m.obj, q, subjects, fpirs, rank=rank, **kw),
        lambda: fnir_at_fpir_ref(m.rounded, q, subjects, fpirs, rank=rank, **kw))
    if out is None:
        return
    res, ref = out
    # std is NaN with one split, in both
    assert_fields_equal(res, ref, "threshold", "tpir", "fnir", "fnir_mean", "fnir_std",
                        "tpir_std")
    for a, b in zip(res.splits, ref["splits"]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# the whole QME report
# ---------------------------------------------------------------------------
@given(data=st.data())
def test_evaluate(device, data):
    n = data.draw(st.integers(2, 6))
    subjects = np.arange(10, 10 + n)
    G = data.draw(st.integers(1, 18))
    g_pids = subjects[data.draw(ids(G, n))]
    extra = data.draw(st.integers(0, 6))
    # every subject probed once plus an unknown probe: every split has mated and non-mated
    q_pids = np.concatenate([subjects, [999], subjects[data.draw(ids(extra, n))]])
    P = q_pids.size
    S = data.draw(matrices(P, G, device=device))
    M = data.draw(matrices(P, n, device=device))
    cams = dict(q_camids=data.draw(ids(P, 3)), g_camids=data.draw(ids(G, 3)),
                q_clothes_ids=data.draw(ids(P, 2)), g_clothes_ids=data.draw(ids(G, 2)))
    seed = data.draw(st.integers(0, 1000))
    out = both_or_neither(
        lambda: metrics.evaluate(S.obj, M.obj, q_pids=q_pids, g_pids=g_pids,
                                 unique_g_pids=subjects, seed=seed, **cams),
        lambda: evaluate_ref(S.rounded, M.rounded, q_pids=q_pids, g_pids=g_pids,
                             unique_g_pids=subjects, seed=seed, **cams))
    if out is None:
        return
    res, ref = out
    assert list(res) == list(ref)
    for k in ref:
        if k.endswith(("_mAP", "PIR_threshold", "_std")) or k.startswith(("TPIR", "FNIR")):
            # sums of fractions / means over splits: summation order may differ
            np.testing.assert_allclose(res[k], ref[k], rtol=1e-12, atol=1e-15, err_msg=k)
        else:  # counts, rates of one count, order statistics: exact
            np.testing.assert_array_equal(res[k], ref[k], err_msg=k)


# ---------------------------------------------------------------------------
# empty matrices: a ValueError naming the argument, from every entry point
# ---------------------------------------------------------------------------
def _calls(S, q, g):
    return {
        "rank_metrics": lambda: metrics.rank_metrics(S, q, g),
        "cmc_curve": lambda: metrics.cmc_curve(S, q, g),
        "tar_at_far": lambda: metrics.tar_at_far(S, q, g),
        "roc": lambda: metrics.roc(S, q, g),
        "det": lambda: metrics.det(S, q, g),
        "eer": lambda: metrics.eer(S, q, g),
        "fnir_at_fpir": lambda: metrics.fnir_at_fpir(S, q, g),
        "evaluate": lambda: metrics.evaluate(S, S, q, q, q, g, g, g, g),
    }


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("name", list(_calls(None, None, None)))
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_empty_matrix_is_a_clear_error(shape, name, container):
    S = np.zeros(shape, np.float32)
    S = torch.from_numpy(S) if container == "torch" else S
    q, g = np.arange(shape[0]), np.arange(shape[1])
    with pytest.raises(ValueError, match=r"(scores|merge_scores|score_mat)\b.*empty"):
        _calls(S, q, g)[name]()
