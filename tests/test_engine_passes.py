"""The engine's fused passes (issue 20): every output of ``rank_counts`` (with
``last_pos``, and issue 30's ``r_hits`` / ``map_r``) against the sort-based reference, the non-finite counts that come out
of the passes, and results independent of the thread count."""
import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
import qme_ext
from qme_ext.metrics.accumulate import GalleryIndex, mode_flags
from qme_ext.ops import evaluation as _ops
from qme_ext.reference.metrics import (_good_junk_masks, average_precision, good_positions,
                                       r_precision_terms)

MODES = ("general", "sc", "cc")


def _rank_counts(S, ids, device, modes=MODES):
    t = to_device(S, device)
    dev = t.device
    q = torch.as_tensor(ids["q_pids"], device=dev)
    cand = GalleryIndex(torch.as_tensor(ids["g_pids"], device=dev)).candidates(q)
    flags = mode_flags(cand, modes, *(torch.as_tensor(ids[k], device=dev) for k in
                                      ("q_camids", "g_camids", "q_clothes", "g_clothes")))
    out = _ops.rank_counts(t, cand.offsets, cand.index, flags, len(modes), cand.max_per_probe)
    return [o.cpu().numpy() for o in out]


def _reference(S, ids, modes=MODES):
    P = S.shape[0]
    fp, ap, ng, lp, rh, mr = (np.full((len(modes), P), v, dtype=d) for v, d in
                              ((-1, np.int64), (0.0, np.float64), (0, np.int64), (-1, np.int64),
                               (0, np.int64), (0.0, np.float64)))
    args = [np.asarray(ids[k]) for k in ("q_pids", "g_pids", "q_camids", "g_camids",
                                         "q_clothes", "g_clothes")]
    for m, mode in enumerate(modes):
        for i in range(P):
            good, junk = _good_junk_masks(i, *args, mode)
            pos = good_positions(S[i].astype(np.float64), good, junk)
            ng[m, i] = pos.size
            if pos.size:
                fp[m, i], lp[m, i] = pos[0], pos[-1]
                ap[m, i] = average_precision(pos)
                rh[m, i], mr[m, i] = r_precision_terms(pos)
    return fp, ap, ng, lp, rh, mr


# (G, n_ids): ~65 goods per row (bucket index), and ~4 per row over several key blocks
# of the CPU twin (one vectorised sweep per good; ties broken by column across blocks)
@pytest.mark.parametrize("seed,nan_frac,G,n_ids", [(0, 0.0, 400, 6), (1, 0.05, 400, 6),
                                                   (2, 0.3, 400, 6), (3, 0.0, 5000, 1200),
                                                   (4, 0.05, 5000, 1200)])
def test_rank_counts_every_output_equals_reference(device, seed, nan_frac, G, n_ids):
    S, ids = make_problem(seed, P=30, G=G, n_ids=n_ids, nan_frac=nan_frac)
    S = np.round(S * 2) / 2  # coarse: many ties with the goods
    S[0, :7] = np.inf
    S[1, :5] = -np.inf
    fp, ap, ng, lp, rh, mr = _rank_counts(S, ids, device)
    rfp, rap, rng_, rlp, rrh, rmr = _reference(S, ids)
    np.testing.assert_array_equal(fp, rfp)
    np.testing.assert_array_equal(ng, rng_)
    np.testing.assert_array_equal(lp, rlp)
    np.testing.assert_allclose(ap, rap, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rh, rrh)
    np.testing.assert_allclose(mr, rmr, rtol=0, atol=1e-12)
    assert (rh <= ng).all() and (mr <= ap + 1e-15).all()
    assert (lp >= fp).all() and ((lp == -1) == (ng == 0)).all()


def _shaped_rows(S, rng):
    """Rows whose goods sit where the CPU twin's first-digit table (issue 29) has edge
    cases: all positive (no zero crossing), one key digit for every score, exact ties
    with the goods, goods at +-inf, goods spread over 60 decades (a table larger than
    the row: the bucket index), signed zeros."""
    S = S.copy()
    S[0] = np.abs(S[0]) + 1.0
    S[1] = 1.0 + rng.integers(0, 3, S.shape[1]) * 2.0 ** -20  # one 16-bit digit
    S[2] = np.round(S[2] * 8) / 8
    S[3, ::5] = np.inf
    S[4] = np.sign(S[4]) * 10.0 ** rng.uniform(-30, 30, S.shape[1])
    S[5, ::3] = 0.0
    S[5, 1::3] = -0.0
    return S


# float32 and float16 keys, ~250 goods per row over several 2048-entry key blocks
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("nan_frac", [0.0, 0.05])
def test_rank_counts_many_goods_equal_reference(device, dtype, nan_frac):
    S, ids = make_problem(11, P=12, G=5000, n_ids=20, ties=False, nan_frac=nan_frac)
    S = _shaped_rows(S.astype(np.float64), np.random.default_rng(5)).astype(dtype)
    got = _rank_counts(S, ids, device)
    want = _reference(S, ids)
    for g, w in zip(got, want):
        if g.dtype == np.float64:
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
        else:
            np.testing.assert_array_equal(g, w)


def test_rank_counts_same_for_any_thread_count():
    S, ids = make_problem(3, P=64, G=3000, n_ids=4, nan_frac=0.01)
    before = qme_ext.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            qme_ext.set_num_threads(n)
            outs.append(_rank_counts(S, ids, "cpu"))
    finally:
        qme_ext.set_num_threads(before)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert a.tobytes() == b.tobytes()


def _openset_literal(M, gcol, enrolled):
    """openset_stats by its definition (docs/definitions.rst, §2.3), one split and probe at a time."""
    from qme_ext.ops.keys import keys
    bits = 64 if M.dtype == np.float64 else 32
    P, C = M.shape
    mo = np.full((enrolled.shape[0], P), -np.inf)
    ng = np.zeros((enrolled.shape[0], P), dtype=np.int64)
    for p in range(P):
        kk = keys(M[p].astype(np.float64), bits)
        for s in range(enrolled.shape[0]):
            cols = (enrolled[s] != 0) & (np.arange(C) != gcol[p])
            if cols.any():
                best = kk[cols].max()
                mo[s, p] = np.nan if best == 0 else M[p][cols & (kk == best)][0]
                if gcol[p] >= 0:
                    ng[s, p] = int((kk[cols] >= kk[gcol[p]]).sum())
    return mo, ng


@pytest.mark.parametrize("enrol_frac", [0.8, 0.05])  # 0.05: most splits miss the top keys
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_openset_stats_equals_definition_and_counts_nonfinite(device, enrol_frac, dtype):
    rng = np.random.default_rng(11)
    P, C = 40, 2500  # more columns than one chunk of the CPU twin
    M = np.round(rng.normal(size=(P, C)) * 8) / 8
    M[rng.random(M.shape) < 0.02] = np.nan
    M[rng.random(M.shape) < 0.01] = np.inf
    M[rng.random(M.shape) < 0.01] = -np.inf
    M[3, :] = np.nan  # a row of NaN only
    M = M.astype(dtype)
    gcol = rng.integers(-1, C, P)
    enrolled = (rng.random((6, C)) < enrol_frac).astype(np.uint8) * 3  # any non-zero enrols
    enrolled[5] = 0  # a split enrolling nobody
    mo, ng, nf = (o.cpu().numpy() for o in _ops.openset_stats(
        to_device(M, device), torch.as_tensor(gcol, device=device),
        torch.as_tensor(enrolled, device=device)))
    rmo, rng_ = _openset_literal(M, gcol, enrolled)
    np.testing.assert_array_equal(mo, rmo)
    np.testing.assert_array_equal(ng, rng_)
    assert nf.tolist() == [int(np.isnan(M).sum()), int(np.isposinf(M).sum()),
                           int(np.isneginf(M).sum())]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_evaluate_warning_counts_equal_a_literal_count(device, dtype):
    from qme_ext.metrics import NonFiniteScoreWarning
    from qme_ext.metrics import evaluate
    S, ids = make_problem(6, P=30, G=300, n_ids=10)
    rng = np.random.default_rng(6)
    M = rng.normal(size=(30, 10))
    S[rng.random(S.shape) < 0.03] = np.nan
    S[rng.random(S.shape) < 0.02] = np.inf
    S[rng.random(S.shape) < 0.01] = -np.inf
    M[rng.random(M.shape) < 0.1] = np.inf
    M[0, 0] = np.nan
    St, Mt = (torch.as_tensor(x).to(dtype).to(device) for x in (S, M))
    with pytest.warns(NonFiniteScoreWarning) as rec:
        evaluate(St, Mt, ids["q_pids"] % 10, ids["q_camids"], ids["q_clothes"], ids["g_pids"] % 10,
                 ids["g_camids"], ids["g_clothes"], np.arange(10))
    counts = [w.message.counts for w in rec if isinstance(w.message, NonFiniteScoreWarning)]
    assert len(counts) == 1

    def literal(t):
        t = t.cpu()
        return {"nan": int(torch.isnan(t).sum()), "posinf": int(torch.isposinf(t).sum()),
                "neginf": int(torch.isneginf(t).sum())}

    assert counts[0] == {"score_mat": literal(St), "merge_score_mat": literal(Mt)}
    assert rec[0].filename == __file__  # points at the caller of evaluate


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_key_histogram_refinement_pass_equals_literal(device, dtype):
    from qme_ext.ops.keys import keys, to_signed64
    rng = np.random.default_rng(12)
    S = np.round(rng.normal(size=(50, 3000)) * 64) / 64
    S[rng.random(S.shape) < 0.01] = np.nan
    S = S.astype(dtype)
    bits = 64 if dtype == np.float64 else 32
    k = keys(S.ravel().astype(np.float64), bits)
    shift = bits - 32
    nan_key = int(k[k != 0].min())
    k[k == 0] = nan_key
    pre = (k >> np.uint64(shift + 16)).astype(np.uint64)
    common = [int(v) for v in np.unique(pre)[-3:]]
    beyond = (1 << (bits - shift - 16)) + 5  # matches no key
    # distinct prefixes (one lookup per entry) and a repeated one (every row filled)
    for prefixes in ([common[2], common[0], beyond, common[1]],
                     [common[0], common[1], common[0], common[2], beyond]):
        h, _ = _ops.key_histogram(to_device(S, device), shift, 16,
                                  torch.tensor([to_signed64(p) for p in prefixes], device=device),
                                  shift + 16, to_signed64(nan_key))
        for f, p in enumerate(prefixes):
            sel = k[pre == np.uint64(p)]
            want = np.bincount(((sel >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.int64),
                               minlength=1 << 16)
            np.testing.assert_array_equal(h[f].cpu().numpy(), want)
