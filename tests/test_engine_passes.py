"""The engine's fused passes (issue 20): every output of ``rank_counts`` (with
``last_pos``) against the sort-based reference, the non-finite counts that come out
of the passes, and results independent of the thread count."""
import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
import qme_ext
from qme_ext.metrics.accumulate import GalleryIndex, mode_flags
from qme_ext.ops import evaluation as _ops
from qme_ext.reference.metrics import _good_junk_masks, average_precision, good_positions

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
    fp, ap, ng, lp = (np.full((len(modes), P), v, dtype=d) for v, d in
                      ((-1, np.int64), (0.0, np.float64), (0, np.int64), (-1, np.int64)))
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
    return fp, ap, ng, lp


@pytest.mark.parametrize("seed,nan_frac", [(0, 0.0), (1, 0.05), (2, 0.3)])
def test_rank_counts_every_output_equals_reference(device, seed, nan_frac):
    S, ids = make_problem(seed, P=30, G=400, n_ids=6, nan_frac=nan_frac)
    S[0, :7] = np.inf
    S[1, :5] = -np.inf
    fp, ap, ng, lp = _rank_counts(S, ids, device)
    rfp, rap, rng_, rlp = _reference(S, ids)
    np.testing.assert_array_equal(fp, rfp)
    np.testing.assert_array_equal(ng, rng_)
    np.testing.assert_array_equal(lp, rlp)
    np.testing.assert_allclose(ap, rap, rtol=0, atol=1e-12)
    assert (lp >= fp).all() and ((lp == -1) == (ng == 0)).all()


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
