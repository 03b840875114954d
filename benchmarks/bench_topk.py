"""Top-k retrieval: qme_ext.topk vs torch.topk, both timed in the same run.

CPU: a few (P, G, k) cells on the cores qme_ext and torch are given.
CUDA (issue 6 grid): P in {1, 100, 10^4} x G in {10^5, 10^6, 10^7} x k in {1, 10, 100, 1000},
float32, cells whose matrix does not fit a third of the free GPU memory skipped; each cell
prints the ratio to torch.topk and GB/s (the matrix read once / time). Skipped without a GPU.
Data are normal scores (tie-free), so both return the same values.
"""
import pytest
import torch

import qme_ext
from conftest import bench_synced, median_time, report, requires_cuda

CPU_CELLS = [(1, 10_000_000, 10), (1, 10_000_000, 1000), (100, 100_000, 10),
             (100, 100_000, 1000), (10_000, 1000, 10), (10_000, 1000, 100)]
CUDA_GRID = [(P, G, k) for P in (1, 100, 10_000) for G in (100_000, 1_000_000, 10_000_000)
             for k in (1, 10, 100, 1000)]


def run_cell(benchmark, P, G, k, device):
    S = torch.randn(P, G, device=device, generator=torch.Generator(device).manual_seed(0))

    bench_synced(benchmark, lambda: qme_ext.topk(S, k), device)
    baseline = median_time(lambda: torch.topk(S, k), device)
    benchmark.extra_info.update(shape=[P, G], k=k)
    report(benchmark, baseline, bytes_touched=S.numel() * S.element_size(), label="torch_topk")
    assert torch.equal(qme_ext.topk(S, k).values, torch.topk(S, k).values)


@pytest.mark.benchmark(group="topk-cpu")
@pytest.mark.parametrize("P,G,k", CPU_CELLS)
def test_topk_cpu(benchmark, P, G, k):
    run_cell(benchmark, P, G, k, "cpu")


@requires_cuda
@pytest.mark.benchmark(group="topk-cuda")
@pytest.mark.parametrize("P,G,k", CUDA_GRID)
def test_topk_cuda(benchmark, P, G, k):
    free, _ = torch.cuda.mem_get_info()
    if P * G * 4 > free / 3:  # the matrix plus torch.topk's own workspace
        pytest.skip(f"{P} x {G} float32 does not fit a third of the free GPU memory")
    run_cell(benchmark, P, G, k, "cuda")
