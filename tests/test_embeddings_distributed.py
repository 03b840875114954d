"""distributed.evaluate_embeddings (issue 21): gallery shards over 2 gloo processes on the
CPU give one process's report on every rank, bit for bit (cosine and euclidean, with
intervals); a subject split over processes is refused on every rank."""
import os

import numpy as np
import torch

from qme_ext import metrics
from test_distributed import run_gloo_workers
from test_embeddings import feature_problem, positional


def _sorted_problem(quantise=True):
    """Features with the gallery ordered by subject, so that shards hold subject ranges."""
    q, g, ids = feature_problem(11, P=25, G=80, quantise=quantise)
    order = np.argsort(ids["g_pids"], kind="stable")
    g = g[order]
    for k in ("g_pids", "g_camids", "g_clothes_ids"):
        ids[k] = ids[k][order]
    return q, g, ids


def _shard(g, ids, lo, hi):
    return g[lo:hi], {**ids, **{k: ids[k][lo:hi] for k in ("g_pids", "g_camids",
                                                          "g_clothes_ids")}}


def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from qme_ext import distributed
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        q, g, ids = _sorted_problem(quantise=False)
        cut = int(np.searchsorted(ids["g_pids"], ids["g_pids"][len(g) // 2]))  # a subject edge
        lo, hi = (0, cut) if rank == 0 else (cut, len(g))
        gs, ids_s = _shard(g, ids, lo, hi)
        for metric, boot in (("cosine", {}), ("euclidean", dict(ci=0.9, n_boot=20))):
            got = distributed.evaluate_embeddings(q, gs, **ids_s, metric=metric,
                                                  block_rows=7 + rank, **boot)
            # bit for bit: the column-shard evaluate of this shard's matmuls
            S, M = metrics.embedding_matrices(q, gs, g_pids=ids_s["g_pids"], metric=metric,
                                              block_rows=7)
            want = distributed.evaluate(S, M, *positional(ids_s, np.unique(ids_s["g_pids"])),
                                        shard="columns", larger_is_better=metric == "cosine",
                                        **boot)
            assert list(got) == list(want)
            for k in want:
                assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]), equal_nan=True), k
            # one process on the whole gallery: the same up to the BLAS's rounding
            one = metrics.evaluate_embeddings(q, g, **ids, metric=metric, block_rows=7, **boot)
            assert list(one) == list(got)
            for k in one:
                np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(one[k], float),
                                           rtol=1e-5, atol=1e-6, err_msg=k)
        # a subject on both processes: no process can average its template
        mid = cut + 1
        gs, ids_s = _shard(g, ids, 0, mid) if rank == 0 else _shard(g, ids, mid, len(g))
        try:
            distributed.evaluate_embeddings(q, gs, **ids_s)
            raise AssertionError("a subject split over processes was accepted")
        except ValueError as exc:
            assert "several processes" in str(exc)
        # one rank's bad input is raised on every rank
        bad = gs[:, :3] if rank == 1 else gs
        try:
            distributed.evaluate_embeddings(q, bad, **ids_s)
            raise AssertionError("rank 1's narrow features were accepted")
        except ValueError as exc:
            assert ("gallery_feats" in str(exc)) if rank == 1 else ("rank(s) [1]" in str(exc))
    finally:
        dist.destroy_process_group()


def test_gloo_gallery_shards_equal_one_process():
    q, g, ids = _sorted_problem()  # warm the ops in the parent before fork
    metrics.evaluate_embeddings(q, g, **ids)
    import torch.distributed  # noqa: F401
    run_gloo_workers(_worker, 2)
