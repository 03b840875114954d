"""Quality-aware scoring and template aggregation throughput.

* QMagFace.score_matrix (tiled matmul + qme_ext::qmagface_epilogue on each tile)
  vs a bare torch.matmul of the same normalised shapes: the epilogue's cost is
  the difference. CPU: small shapes. CUDA: 10,000 x 1,000,000 x 512 bf16 with a
  bf16 output (20 GB; the float32 output would need 40 GB, still inside an
  H100), skipped without a GPU.
* template_aggregate: GB/s of feature bytes read.

Run: python benchmarks/bench_quality.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import torch

import qme_ext
from conftest import device_info  # run as a script: benchmarks/ is on sys.path
from qme_ext.quality import QMagFace, aggregate_templates


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev, reps=3):
    fn()
    _sync(dev)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_score_matrix(P, G, D, dtype, dev, block, out_dtype=None, reps=3):
    g = torch.Generator(device="cpu").manual_seed(0)
    pf = (torch.randn(P, D, generator=g) * 20).to(dtype).to(dev)
    gf = (torch.randn(G, D, generator=g) * 20).to(dtype).to(dev)
    qm = QMagFace("magface-r100")
    pn, gn = torch.nn.functional.normalize(pf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    t_mm = timeit(lambda: pn @ gn.T, dev, reps)
    t_q = timeit(lambda: qm.score_matrix(pf, gf, block=block, out_dtype=out_dtype), dev, reps)
    flops = 2.0 * P * G * D
    print(f"score_matrix {dev.type} {P}x{G}x{D} {str(dtype)[6:]}: matmul {t_mm * 1e3:9.1f} ms "
          f"({flops / t_mm / 1e12:6.2f} TFLOP/s)  qmagface {t_q * 1e3:9.1f} ms "
          f"({flops / t_q / 1e12:6.2f} TFLOP/s)  ratio {t_q / t_mm:5.2f}")


def bench_tiled_large(dev):
    # Full-size run: the plain matmul would need the whole output at once too, so
    # compare per-tile: bare tile matmul loop vs the same loop with the epilogue.
    P, G, D = 10_000, 1_000_000, 512
    pf = (torch.randn(P, D, device=dev) * 20).to(torch.bfloat16)
    gf = (torch.randn(G, D, device=dev) * 20).to(torch.bfloat16)
    qm = QMagFace("magface-r100")
    block = (2048, 65536)
    pn = torch.nn.functional.normalize(pf.float(), dim=1).to(torch.bfloat16)
    gn = torch.nn.functional.normalize(gf.float(), dim=1).to(torch.bfloat16)
    out = torch.empty(P, G, dtype=torch.bfloat16, device=dev)

    def bare():
        for i in range(0, P, block[0]):
            for j in range(0, G, block[1]):
                out[i:i + block[0], j:j + block[1]] = pn[i:i + block[0]] @ gn[j:j + block[1]].T

    t_mm = timeit(bare, dev, 1)
    out = None  # release the tiled output before score_matrix allocates its own
    t_q = timeit(lambda: qm.score_matrix(pf, gf, block=block, out_dtype=torch.bfloat16), dev, 1)
    flops = 2.0 * P * G * D
    print(f"score_matrix cuda {P}x{G}x{D} bf16 -> bf16: tiled matmul+copy {t_mm:.2f} s "
          f"({flops / t_mm / 1e12:.1f} TFLOP/s), qmagface {t_q:.2f} s "
          f"({flops / t_q / 1e12:.1f} TFLOP/s)")


def bench_aggregate(N, D, T, dtype, dev, reps=3):
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.randn(N, D, generator=g).to(dtype).to(dev)
    w = torch.rand(N, generator=g).to(dev)
    cuts = torch.sort(torch.randint(0, N, (T - 1,), generator=g)).values
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([N])]).to(dev)
    t = timeit(lambda: aggregate_templates(f, w, off, True), dev, reps)
    gb = f.numel() * f.element_size() / 1e9
    print(f"template_aggregate {dev.type} N={N} D={D} T={T} {str(dtype)[6:]}: "
          f"{t * 1e3:8.2f} ms  {gb / t:7.2f} GB/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print("environment:", device_info("cuda" if qme_ext.cuda_available() else "cpu"))
    cpu = torch.device("cpu")
    n = 1 if args.quick else 2
    bench_score_matrix(512 * n, 8192 * n, 512, torch.float32, cpu, (256, 4096))
    bench_aggregate(100_000 * n, 512, 5_000, torch.float32, cpu)
    if qme_ext.cuda_available():
        dev = torch.device("cuda")
        bench_score_matrix(4096, 262144, 512, torch.bfloat16, dev, (2048, 65536))
        bench_score_matrix(4096, 262144, 512, torch.float32, dev, (2048, 65536))
        bench_aggregate(4_000_000, 512, 100_000, torch.bfloat16, dev)
        bench_aggregate(4_000_000, 512, 100_000, torch.float32, dev)
        if not args.quick:
            bench_tiled_large(dev)
    else:
        print("CUDA benchmarks skipped: no GPU / CUDA module "
              "(10,000 x 1,000,000 x 512 bf16 score_matrix, GPU template_aggregate)")


if __name__ == "__main__":
    main()
