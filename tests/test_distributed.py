"""Sharded evaluation: the count_before op of column shards, and qme_ext.distributed
with 2 and 4 gloo processes on the CPU (evaluate and topk; row and column shards,
uneven splits, block sizes, dtypes, sub-groups, errors) against one process, bit
for bit."""
import multiprocessing
import os
import socket
import time

import numpy as np
import pytest
import torch

from conftest import requires_cuda, to_device
from qme_ext.ops import keys as _keys
from qme_ext import metrics
from qme_ext.metrics import core as metrics_core
from qme_ext.metrics.accumulate import TensorSource
from qme_ext.ops.shard import count_before
from qme_ext.reference import count_before_ref
from report_helpers import assert_same_report, evaluation_inputs


# ---------------------------------------------------------------------------
# qme_ext::count_before
# ---------------------------------------------------------------------------
def _queries(rng, S_full, n_rows, dtype_bits):
    """Queries drawn from the full matrix's entries (ties, NaN, a duplicate, an empty row):
    offsets, values, keys (for the op) and global columns."""
    per_row = rng.integers(2, 6, n_rows)
    per_row[1] = 0
    offsets = np.concatenate([[0], np.cumsum(per_row)])
    rows = np.repeat(np.arange(n_rows), per_row)
    cols = rng.integers(0, S_full.shape[1], rows.size)
    cols[1] = cols[0]  # row 0 asks twice about one entry
    values = S_full[rows, cols].astype(np.float64)
    return offsets, values, _keys.keys(values, dtype_bits), cols


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_count_before_matches_brute_force(device, dtype):
    rng = np.random.default_rng(3)
    full = np.round(rng.normal(size=(9, 60)) * 3) / 3
    full[rng.random(full.shape) < 0.05] = np.nan
    full[0, :4] = 0.0
    full[0, 4] = -0.0
    t = torch.from_numpy(full).to(dtype)
    exact = t.to(torch.float64).numpy()  # the values as the dtype holds them
    bits = 64 if dtype == torch.float64 else 32
    offsets, values, keys, cols = _queries(rng, exact, 9, bits)
    for lo, hi in ((0, 60), (0, 17), (17, 41), (41, 60)):
        shard = to_device(t[:, lo:hi], device)
        got = count_before(shard, lo, to_device(offsets, device),
                           to_device(keys.view(np.int64), device), to_device(cols, device))
        want = count_before_ref(exact[:, lo:hi], lo, offsets, values, cols)
        np.testing.assert_array_equal(got.cpu().numpy(), want)
    # strided input (a transposed view) reads the same entries
    tt = to_device(t.T.contiguous().T, device)
    got = count_before(tt, 0, to_device(offsets, device), to_device(keys.view(np.int64), device),
                       to_device(cols, device))
    np.testing.assert_array_equal(got.cpu().numpy(),
                                  count_before_ref(exact, 0, offsets, values, cols))


def test_count_before_opcheck(device):
    S = torch.randn(5, 12, device=device)
    offsets = torch.tensor([0, 2, 2, 5, 6, 7], device=device)
    keys = torch.from_numpy(_keys.keys(np.linspace(-1, 1, 7), 32).view(np.int64)).to(device)
    cols = torch.arange(7, device=device) * 3
    torch.library.opcheck(count_before, (S, 4, offsets, keys, cols),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_count_before_refuses_bad_queries():
    S = torch.randn(3, 4)
    off = torch.tensor([0, 1, 1, 2])
    keys = torch.tensor([5, 7])
    with pytest.raises(ValueError, match="query_offsets"):
        count_before(S, 0, torch.tensor([0, 2, 1, 2]), keys, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="query_cols"):
        count_before(S, 0, off, keys, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="query_keys"):
        count_before(S, 0, off, torch.tensor([1 << 33, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="col_offset"):
        count_before(S, -1, off, keys, torch.tensor([0, 1]))


# ---------------------------------------------------------------------------
# column-shard bookkeeping in one process (the reducer is the identity)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_path_in_one_process_equals_row_path(dtype):
    S, M, ids = evaluation_inputs(2, dtype=dtype)
    whole = metrics.evaluate(S, M, *ids)
    for block_rows in (None, 4):
        src = TensorSource(torch.from_numpy(S), torch.from_numpy(M), block_rows)
        got = metrics_core._evaluate_source(src, *ids, shard="columns")
        assert_same_report(got, whole)


def test_reducer_needs_an_initialised_group():
    from qme_ext import distributed
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        distributed.evaluate(*evaluation_inputs(0)[:2], *evaluation_inputs(0)[2])


# ---------------------------------------------------------------------------
# gloo processes
# ---------------------------------------------------------------------------
def _splits(n, world, first_small=True):
    """Contiguous shards of range(n) in rank order; uneven: the first holds one element."""
    if world == 1:
        return [np.arange(n)]
    if first_small:
        return [np.arange(1)] + np.array_split(np.arange(1, n), world - 1)
    return np.array_split(np.arange(n), world)


def _rows(S, M, ids, idx):
    q, qc, qk, g, gc, gk, u = ids
    return S[idx], M[idx], (q[idx], qc[idx], qk[idx], g, gc, gk, u)


def _cols(S, M, ids, gi, si):
    q, qc, qk, g, gc, gk, u = ids
    return S[:, gi], M[:, si], (q, qc, qk, g[gi], gc[gi], gk[gi], u[si])


def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import qme_ext
    qme_ext.set_num_threads(1)
    import torch.distributed as dist
    from qme_ext import distributed
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for dtype, seed in ((np.float32, 0), (np.float64, 1), (np.float16, 2)):
            S, M, ids = evaluation_inputs(seed, dtype=dtype)
            want = metrics.evaluate(S, M, *ids)
            rows = _splits(S.shape[0], world)
            gcols, scols = _splits(S.shape[1], world), _splits(M.shape[1], world, False)
            Sr, Mr, ir = _rows(S, M, ids, rows[rank])
            assert_same_report(distributed.evaluate(Sr, Mr, *ir, shard="rows"), want)
            assert_same_report(distributed.evaluate(Sr, Mr, *ir, block_rows=2), want)
            Sc, Mc, ic = _cols(S, M, ids, gcols[rank], scols[rank])
            assert_same_report(distributed.evaluate(Sc, Mc, *ic, shard="columns"), want)
            assert_same_report(distributed.evaluate(Sc, Mc, *ic, block_rows=5), want)
            if dtype == np.float32:  # bootstrap intervals of row shards: one process's, bitwise
                boot = dict(ci=0.9, n_boot=40, boot_seed=7)
                want_ci = metrics.evaluate(S, M, *ids, **boot)
                for got in (distributed.evaluate(Sr, Mr, *ir, shard="rows", block_rows=3,
                                                 **boot),
                            distributed.evaluate(Sc, Mc, *ic, shard="columns", **boot)):
                    assert list(got) == list(want_ci)
                    for k in want_ci:
                        assert np.array_equal(np.asarray(got[k]), np.asarray(want_ci[k]),
                                              equal_nan=True), k
                    for k in want_ci.replicates:
                        assert np.array_equal(got.replicates[k], want_ci.replicates[k],
                                              equal_nan=True), k
                    assert metrics.compare(got, want_ci)["GR_mAP"]["ci"] == (0.0, 0.0)
        # top-k: row and column shards give qme_ext.topk of the whole matrix
        S = evaluation_inputs(3)[0]
        S[0, :7] = 0.0
        S[0, 3] = -0.0
        for dtype in (torch.float32, torch.bfloat16):
            t = torch.from_numpy(S).to(dtype)
            for k, largest in ((1, True), (9, True), (9, False), (40, True)):
                want = qme_ext.topk(t, k, largest)
                r = _splits(S.shape[0], world)[rank]
                c = _splits(S.shape[1], world)[rank]
                for got in (distributed.topk(t[r], k, largest, shard="rows"),
                            distributed.topk(t[:, c], k, largest, shard="columns")):
                    assert torch.equal(got.indices, want.indices)
                    assert torch.equal(got.values.view(torch.int16 if dtype == torch.bfloat16
                                                       else torch.int32),
                                       want.values.view(torch.int16 if dtype == torch.bfloat16
                                                        else torch.int32))
        got = distributed.topk(S[:, _splits(S.shape[1], world)[rank]], 3, shard="columns")
        assert isinstance(got.values, np.ndarray) and got.indices.shape == (S.shape[0], 3)
        # a sub-group: ranks {0, 1} shard by rows, the others by columns, at the same time
        S, M, ids = evaluation_inputs(4)
        want = metrics.evaluate(S, M, *ids)
        groups = [dist.new_group([0, 1])] + ([dist.new_group(list(range(2, world)))]
                                             if world > 2 else [])
        mine = 0 if rank < 2 else 1
        sub_rank, sub_size = (rank, 2) if mine == 0 else (rank - 2, world - 2)
        if mine == 0:
            args = _rows(S, M, ids, _splits(S.shape[0], sub_size)[sub_rank])
        else:
            args = _cols(S, M, ids, _splits(S.shape[1], sub_size)[sub_rank],
                         _splits(M.shape[1], sub_size, False)[sub_rank])
        assert_same_report(distributed.evaluate(args[0], args[1], *args[2],
                                                group=groups[mine]), want)
        # errors: one rank's bad input is raised everywhere; ambiguous layouts are refused
        q = ids[0][:-1] if rank == 0 else ids[0]
        try:
            distributed.evaluate(S, M, q, *ids[1:], shard="columns")
            raise AssertionError("a bad q_pids on rank 0 was not reported")
        except ValueError as exc:
            assert ("q_pids" in str(exc)) if rank == 0 else ("rank(s) [0]" in str(exc))
        try:
            distributed.evaluate(S, M, *ids)
            raise AssertionError("an ambiguous layout was accepted")
        except ValueError as exc:
            assert "pass shard=" in str(exc)
        try:
            distributed.evaluate(*_rows(S, M, ids, _splits(S.shape[0], world)[rank])[:2],
                                 *_rows(S, M, ids, _splits(S.shape[0], world)[rank])[2],
                                 shard="columns")
            raise AssertionError("row shards passed as columns were accepted")
        except ValueError as exc:
            assert "every process must hold every probe" in str(exc)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def warm():
    # The first call of the custom ops imports torch's compile machinery (seconds):
    # pay it once here, so that forked workers start warm.
    S, M, ids = evaluation_inputs(0, P=6, G=20, n_ids=3)
    metrics.evaluate(S, M, *ids)
    import torch.distributed  # noqa: F401  (imported once in the parent, before fork)


def run_gloo_workers(worker, world: int, timeout_s: float = 240) -> None:
    """Run ``worker(rank, world, port)`` in ``world`` processes; fail on an error or
    after ``timeout_s`` seconds."""
    import torch.multiprocessing as mp
    # fork: the workers inherit the warm interpreter (spawn would re-import torch in each)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(worker, args=(world, _free_port()), nprocs=world, join=False,
                             start_method=method)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} gloo workers did not finish in time")


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_processes_equal_one_process(warm, world):
    run_gloo_workers(_worker, world)


@requires_cuda
def test_nccl_one_process_equals_one_process(warm, monkeypatch):
    """The NCCL path of TorchReducer (CUDA tensors in the collectives, the process's own
    GPU) in a world of one, the most a one-GPU machine can run: same report as
    metrics.evaluate, same top-k as qme_ext.topk."""
    import torch.distributed as dist
    import qme_ext
    from qme_ext import distributed
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        assert distributed.TorchReducer().device == torch.device("cuda", 0)
        for dtype, seed in ((np.float32, 0), (np.float64, 1)):
            S, M, ids = evaluation_inputs(seed, dtype=dtype)
            want = metrics.evaluate(S, M, *ids)
            assert_same_report(distributed.evaluate(S, M, *ids, device="cuda", shard="rows"),
                               want)
            assert_same_report(distributed.evaluate(torch.from_numpy(S).cuda(),
                                                    torch.from_numpy(M).cuda(), *ids,
                                                    shard="columns", block_rows=7), want)
        t = torch.from_numpy(evaluation_inputs(3)[0]).cuda()
        got, want = distributed.topk(t, 9, shard="columns"), qme_ext.topk(t, 9)
        assert torch.equal(got.indices.cpu(), want.indices.cpu())
        assert torch.equal(got.values.cpu(), want.values.cpu())
    finally:
        dist.destroy_process_group()
