"""Fused QME expert mixture (qme_ext::expert_fuse) vs the eager PyTorch reference.

CPU: training step (forward + backward) at a small size. CUDA (skipped without a
GPU): B = 1024 probes x G = 1e5 gallery x K = 3 models, Z = 2 experts, r = 3,
training step and inference. Bytes for GB/s: the kernel forward must read X
(B*K*G scores) and write F (B*G); the BatchNorm statistics cost one more read of
X in training mode; the backward reads X and grad F and writes grad X.
"""
import os
import time

import pytest
import torch

from conftest import bench_synced, report, requires_cuda, sync
from qme_ext.qme.modules import QME
from qme_ext.reference.qme import ReferenceScoreExpert, load_expert_state, reference_expert_fuse

K, Z, RATIO = 3, 2, 3


def make(device, B, G, dropout=0.1, seed=0):
    torch.manual_seed(seed)
    model = QME([f"m{i}" for i in range(K)], num_experts=Z, ratio=RATIO, dropout=dropout).to(device)
    refs = [load_expert_state(ReferenceScoreExpert(K, RATIO, dropout), e).to(device)
            for e in model.experts]
    x = torch.randn((B, K, G), device=device)
    q = torch.rand(B, device=device)
    return model, refs, x, q


def wall(fn, device, repeat=3):
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def train_step_kernel(model, x, q):
    def run():
        model.zero_grad(set_to_none=True)
        model(x, q).sum().backward()
    return run


def train_step_reference(model, refs, x, q):
    def run():
        for r in refs:
            r.zero_grad(set_to_none=True)
        reference_expert_fuse(x, model.gate(q, x.shape[0]), *refs).sum().backward()
    return run


def test_cpu_train_step(benchmark):
    B = int(os.environ.get("QME_BENCH_CPU_B", "16"))
    G = int(os.environ.get("QME_BENCH_CPU_G", "20000"))
    model, refs, x, q = make("cpu", B, G)
    baseline = wall(train_step_reference(model, refs, x, q), "cpu")
    benchmark.extra_info.update(B=B, G=G, K=K, Z=Z)
    benchmark.pedantic(train_step_kernel(model, x, q), rounds=5, iterations=1, warmup_rounds=1)
    report(benchmark, baseline, label="eager_reference")


def test_cpu_inference(benchmark):
    B = int(os.environ.get("QME_BENCH_CPU_B", "16"))
    G = int(os.environ.get("QME_BENCH_CPU_G", "20000"))
    model, refs, x, q = make("cpu", B, G)
    model.eval()
    for r in refs:
        r.eval()
    with torch.no_grad():
        baseline = wall(lambda: reference_expert_fuse(x, model.gate(q, B), *refs), "cpu")
        benchmark.extra_info.update(B=B, G=G, K=K, Z=Z)
        benchmark.pedantic(lambda: model(x, q), rounds=5, iterations=1, warmup_rounds=1)
    report(benchmark, baseline, label="eager_reference")


@pytest.fixture(scope="module")
def cuda_problem():
    B = int(os.environ.get("QME_BENCH_B", "1024"))
    G = int(os.environ.get("QME_BENCH_G", "100000"))
    return make("cuda", B, G)


@requires_cuda
def test_cuda_train_step(benchmark, cuda_problem):
    model, refs, x, q = cuda_problem
    model.train()
    B, _, G = x.shape
    try:
        baseline = wall(train_step_reference(model, refs, x, q), "cuda", repeat=2)
    except torch.cuda.OutOfMemoryError:  # the eager reference stores (B, G, rK) activations
        baseline = float("nan")
    torch.cuda.empty_cache()
    benchmark.extra_info.update(B=B, G=G, K=K, Z=Z)
    bench_synced(benchmark, train_step_kernel(model, x, q), "cuda")
    # stats read + forward (read X, write F) + backward (read X and grad F, write grad X)
    touched = 4 * (B * K * G * 2 + B * G + B * K * G + B * G + B * K * G)
    report(benchmark, baseline, bytes_touched=touched, label="eager_reference")


@requires_cuda
def test_cuda_inference(benchmark, cuda_problem):
    model, refs, x, q = cuda_problem
    model.eval()
    for r in refs:
        r.eval()
    B, _, G = x.shape
    with torch.no_grad():
        baseline = wall(lambda: reference_expert_fuse(x, model.gate(q, B), *refs), "cuda")
        torch.cuda.empty_cache()
        benchmark.extra_info.update(B=B, G=G, K=K, Z=Z)
        bench_synced(benchmark, lambda: model(x, q), "cuda")
    model.train()
    report(benchmark, baseline, bytes_touched=4 * (B * K * G + B * G), label="eager_reference")
