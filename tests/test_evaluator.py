"""metrics.Evaluator (issue 30): batches in, evaluate_embeddings' report out, bit for bit on
one process (mixed roles, numpy and torch, every device, no_grad and requires_grad inputs,
with intervals), 'both' roles with the self match excluded, reset and the refusals, and
2 gloo processes giving one process's report on every rank (gathered; probes scored in
shares or all on every rank)."""
import os

import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics import Evaluator
from report_helpers import assert_same_report
from test_distributed import run_gloo_workers
from test_embeddings import feature_problem


def _entries(seed=3, P=30, G=90):
    """Probe and gallery features with their ids, shuffled into one stream of entries with
    a bool is_query mask (as a ReID test loader yields them)."""
    q, g, ids = feature_problem(seed, P=P, G=G)
    feats = np.concatenate([q, g])
    pids = np.concatenate([ids["q_pids"], ids["g_pids"]])
    cams = np.concatenate([ids["q_camids"], ids["g_camids"]])
    clo = np.concatenate([ids["q_clothes_ids"], ids["g_clothes_ids"]])
    is_q = np.arange(P + G) < P
    order = np.random.default_rng(seed).permutation(P + G)
    return feats[order], pids[order], cams[order], clo[order], is_q[order]


def _direct(feats, pids, cams, clo, is_q, **options):
    """evaluate_embeddings of the same entries, probes and gallery in stream order."""
    return metrics.evaluate_embeddings(
        feats[is_q], feats[~is_q], q_pids=pids[is_q], q_camids=cams[is_q],
        q_clothes_ids=clo[is_q], g_pids=pids[~is_q], g_camids=cams[~is_q],
        g_clothes_ids=clo[~is_q], **options)


def _feed(ev, feats, pids, cams, clo, is_q, batch=16, device="cpu", torch_in=True):
    for a in range(0, len(pids), batch):
        s = slice(a, a + batch)
        f = torch.from_numpy(feats[s]).to(device) if torch_in else feats[s]
        ids = [torch.from_numpy(x[s]).to(device) for x in (pids, cams, clo)] if torch_in \
            else [x[s] for x in (pids, cams, clo)]
        ev.update(f, *ids, is_query=torch.from_numpy(is_q[s]) if torch_in else is_q[s])


@pytest.mark.parametrize("torch_in", [True, False])
def test_report_bit_for_bit_equals_evaluate_embeddings(device, torch_in):
    e = _entries()
    ev = Evaluator()
    _feed(ev, *e, device=device, torch_in=torch_in)
    assert ev.num_entries == len(e[1])
    got = ev.compute()
    assert_same_report(got, _direct(*e))
    assert "GR_RP" in got and "GR_MAP@R" in got and got["GR_mAP"] > 0
    assert_same_report(ev.compute(), got)  # the state is kept
    ev.reset()
    assert ev.num_entries == 0
    with pytest.raises(ValueError, match="needs probe and gallery entries"):
        ev.compute()


def test_options_pass_through_and_roles_as_booleans():
    feats, pids, cams, clo, is_q = _entries(5)
    ev = Evaluator(metric="euclidean", ci=0.9, n_boot=30, max_memory="64KB", seed=3)
    for role in (True, False):  # probes first, then the gallery, in whole-role batches
        m = is_q == role
        ev.update(feats[m], pids[m], cams[m], clo[m], is_query=role)
    order = np.argsort(~is_q, kind="stable")
    want = _direct(feats[order], pids[order], cams[order], clo[order], is_q[order],
                   metric="euclidean", ci=0.9, n_boot=30, max_memory="64KB", seed=3)
    got = ev.compute()
    assert list(got) == list(want)
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]), equal_nan=True), k


def test_features_that_require_grad_and_no_grad(device):
    feats, pids, cams, clo, is_q = _entries(7)
    model = torch.nn.Linear(feats.shape[1], 8).to(device)
    x = torch.from_numpy(feats).to(device)
    ev, ev_ng = Evaluator(), Evaluator()
    for a in range(0, len(pids), 25):
        out = model(x[a:a + 25])
        assert out.requires_grad
        ev.update(out, pids[a:a + 25], cams[a:a + 25], clo[a:a + 25], is_query=is_q[a:a + 25])
        with torch.no_grad():
            ev_ng.update(model(x[a:a + 25]), pids[a:a + 25], cams[a:a + 25], clo[a:a + 25],
                         is_query=is_q[a:a + 25])
    assert all(not f.requires_grad and f.grad_fn is None for f in ev._feats)
    with torch.no_grad():
        emb = model(x).cpu().numpy()
    want = _direct(emb, pids, cams, clo, is_q)
    assert_same_report(ev.compute(), want)
    assert_same_report(ev_ng.compute(), want)
    assert model.weight.grad is None  # nothing ran backward through the stored copies


def test_stored_copy_and_store_on_cpu(device):
    feats, pids, cams, clo, is_q = _entries(8)
    buf = torch.from_numpy(feats.copy()).to(device)
    ev = Evaluator(store_on="cpu")
    ev.update(buf, pids, cams, clo, is_query=is_q)
    buf.zero_()  # the caller reuses its buffer: the state does not change
    assert ev._feats[0].device.type == "cpu"
    assert_same_report(ev.compute(), _direct(feats, pids, cams, clo, is_q))


def test_both_roles_exclude_the_self_match():
    """'both': one set ranked against itself; without camera ids each entry has its own
    camera, so only its self match is junk (pytorch-metric-learning's query = reference)."""
    feats, pids, _, _, _ = _entries(9)
    n = len(pids)
    ev = Evaluator(metric="dot")
    ev.update(feats[:50], pids[:50], is_query="both")
    ev.update(feats[50:], pids[50:], is_query="both")
    cams, clo = np.arange(n), np.zeros(n, np.int64)
    want = metrics.evaluate_embeddings(feats, feats, q_pids=pids, q_camids=cams,
                                       q_clothes_ids=clo, g_pids=pids, g_camids=cams,
                                       g_clothes_ids=clo, metric="dot")
    got = ev.compute()
    assert_same_report(got, want)
    # the self match is never counted: R-precision and Rank-1 of each row with its own
    # column dropped, written out
    S = feats.astype(np.float64) @ feats.T.astype(np.float64)
    rps, top1 = [], []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        rel = pids[others] == pids[i]
        if rel.any():
            ranked = rel[np.argsort(-S[i, others], kind="stable")]
            rps.append(ranked[:rel.sum()].mean())
            top1.append(ranked[0])
    assert got["GR_RP"] == pytest.approx(np.mean(rps), abs=1e-12)
    assert got["GR_top1"] == pytest.approx(np.mean(top1), abs=1e-12)
    assert got["CC_mAP"] == 0.0  # one clothes id: no clothes-changing match


@pytest.mark.parametrize("call,match", [
    (lambda ev: ev.update(np.zeros((3, 5), np.float32), [1, 2]), r"pids: expected shape \(3,\)"),
    (lambda ev: ev.update(np.zeros((3, 5), np.int64), [1, 2, 3]), "features: expected float"),
    (lambda ev: ev.update(np.zeros(5, np.float32), [1]), "features: expected a 2-D"),
    (lambda ev: ev.update([[0.0]], [1]), "features: expected a torch tensor"),
    (lambda ev: ev.update(np.zeros((2, 4), np.float32), [1, 2], is_query="maybe"), "is_query"),
    (lambda ev: ev.update(np.zeros((2, 4), np.float32), [1, 2], is_query=[1, 0]), "is_query"),
    (lambda ev: ev.update(np.zeros((2, 4), np.float32), [0.5, 2]), "pids: expected integer"),
])
def test_bad_updates_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(Evaluator())


def test_inconsistent_batches_are_refused():
    ev = Evaluator()
    ev.update(np.ones((2, 4), np.float32), [1, 2], [0, 1])
    with pytest.raises(ValueError, match="features: expected 4 columns"):
        ev.update(np.ones((2, 3), np.float32), [1, 2], [0, 1])
    with pytest.raises(TypeError, match="features: expected dtype torch.float32"):
        ev.update(np.ones((2, 4), np.float64), [1, 2], [0, 1])
    with pytest.raises(ValueError, match="camids: give them in every update or in none"):
        ev.update(np.ones((2, 4), np.float32), [1, 2])
    with pytest.raises(ValueError, match="metric"):
        Evaluator(metric="cos")
    with pytest.raises(ValueError, match="split"):
        Evaluator(split="gallery")
    with pytest.raises(RuntimeError, match="not initialised"):
        Evaluator(distributed=True).compute()


# ---- 2 gloo processes -------------------------------------------------------------------
def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        e = _entries(4, P=40, G=110)
        cut = 57  # uneven shards of the stream, cut inside a batch
        mine = [x[:cut] if rank == 0 else x[cut:] for x in e]
        ev = Evaluator()
        _feed(ev, *mine, batch=13 + rank)
        got = ev.compute()
        assert_same_report(got, _direct(*e))  # one process fed both ranks' batches in order
        local = Evaluator(distributed=False)
        _feed(local, *mine)
        assert_same_report(local.compute(), _direct(*mine))
        # float16 features travel as raw bytes; a rank without entries takes part
        half = Evaluator(ci=0.9, n_boot=20)
        if rank == 1:
            _feed(half, e[0].astype(np.float16), *e[1:], torch_in=False)
        rep = half.compute()
        want = _direct(e[0].astype(np.float16), *e[1:], ci=0.9, n_boot=20)
        assert list(rep) == list(want)
        for k in want:
            assert np.array_equal(np.asarray(rep[k]), np.asarray(want[k]), equal_nan=True), k
        # enough probes for two 256-row shares: each rank scores its share (and with
        # split="none" all of them); the same report, bit for bit, with intervals
        big = _entries(6, P=600, G=150)
        mine = [x[:400] if rank == 0 else x[400:] for x in big]
        want = _direct(*big, ci=0.9, n_boot=20)
        for split in ("probes", "none"):
            ev = Evaluator(split=split, ci=0.9, n_boot=20)
            _feed(ev, *mine, batch=100)
            rep = ev.compute()
            assert list(rep) == list(want)
            for k in want:
                assert np.array_equal(np.asarray(rep[k]), np.asarray(want[k]),
                                      equal_nan=True), (split, k)
        # one rank's different width is refused on every rank
        bad = Evaluator()
        bad.update(np.ones((2, 3 + rank), np.float32), [1, 2], is_query="both")
        try:
            bad.compute()
            raise AssertionError("different feature widths were accepted")
        except ValueError as exc:
            assert "differ in feature width" in str(exc) or "rank(s)" in str(exc)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def warm():
    e = _entries(0, P=6, G=20)
    _direct(*e)
    import torch.distributed  # noqa: F401  (imported once in the parent, before fork)


def test_gloo_two_processes_give_one_process_report(warm):
    run_gloo_workers(_worker, 2)
