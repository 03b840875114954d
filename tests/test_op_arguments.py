"""The custom ops refuse, with a ValueError naming the argument, every input a kernel
would index out of bounds with or read from another device (a CUDA kernel cannot
throw: a bad pointer there is an illegal address that breaks the whole process).
The ops are public through torch.ops.qme_ext, so this is checked at the op, not
only in the friendly API above it."""
import pytest
import torch

from conftest import requires_cuda
from qme_ext.ops import evaluation as _ops, qme as _ops_qme, quality as _ops_quality


def rank_counts_args(device="cpu"):
    S = torch.randn(3, 5, device=device)
    offs = torch.tensor([0, 1, 3, 4], device=device)
    index = torch.tensor([0, 2, 4, 1], device=device)
    flags = torch.ones(4, dtype=torch.uint8, device=device)
    return dict(scores=S, cand_offsets=offs, cand_index=index, cand_flags=flags, num_modes=1,
                max_candidates=2)


def test_rank_counts_good_arguments_run():
    first, ap, n, last, *_ = _ops.rank_counts(**rank_counts_args())
    assert n.tolist() == [[1, 2, 1]]


@pytest.mark.parametrize("change,match", [
    (dict(cand_offsets=torch.tensor([0, 1, 3, 4], dtype=torch.int32)), "cand_offsets: expected"),
    (dict(cand_offsets=torch.tensor([0, 1, 3])), r"cand_offsets: expected .*shape \(4,\)"),
    (dict(cand_offsets=torch.tensor([0, 3, 1, 4])), "cand_offsets: expected non-decreasing"),
    (dict(cand_offsets=torch.tensor([0, 1, 3, 9])), "cand_offsets: expected non-decreasing"),
    (dict(cand_index=torch.tensor([0, 2, 5, 1])), r"cand_index: gallery columns must lie in \[0, 4\]"),
    (dict(cand_index=torch.tensor([0, -1, 4, 1])), "cand_index: gallery columns"),
    (dict(cand_flags=torch.ones(3, dtype=torch.uint8)), r"cand_flags: expected .*shape \(4,\)"),
    (dict(cand_flags=torch.ones(4, dtype=torch.int64)), "cand_flags: expected a torch.uint8"),
    (dict(max_candidates=1), "max_candidates: expected >= 2"),
])
def test_rank_counts_bad_arguments(change, match):
    args = rank_counts_args()
    args.update(change)
    with pytest.raises(ValueError, match=match):
        _ops.rank_counts(**args)


def test_key_histogram_prefixes_dtype():
    S = torch.randn(3, 5)
    with pytest.raises(ValueError, match="prefixes: expected a torch.int64"):
        _ops.key_histogram(S, 0, 16, torch.zeros(2, dtype=torch.int32), 16, 0)


def test_qmagface_epilogue_norms():
    cos = torch.rand(2, 3)
    out = torch.empty(2, 3)
    qp, qg = torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="q_probe: expected a torch.float64"):
        _ops_quality.qmagface_epilogue(cos, qp.float(), qg, 0.1, 0.2, out)
    with pytest.raises(ValueError, match=r"q_gallery: expected .*shape \(3,\)"):
        _ops_quality.qmagface_epilogue(cos, qp, qg[:2], 0.1, 0.2, out)


def expert_args(B=2, K=3, G=4, Z=2, H=5):
    g = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(B, K, G, generator=g), a=torch.ones(Z, K), c=torch.zeros(Z, K),
                w1=torch.randn(Z, H, K, generator=g), b1=torch.zeros(Z, H),
                w2=torch.randn(Z, H, generator=g), b2=torch.zeros(Z), gate=torch.rand(B, Z),
                dropout=0.0, seed=0)


@pytest.mark.parametrize("name,bad", [("c", (2, 2)), ("b1", (2,)), ("w2", (2, 4)), ("b2", (2, 1)),
                                      ("a", (3, 3)), ("gate", (2, 3)), ("w1", (2, 5, 2))])
def test_expert_fuse_parameter_shapes(name, bad):
    args = expert_args()
    _ops_qme.expert_fuse(**args)  # the good arguments run
    args[name] = torch.zeros(bad)
    with pytest.raises(ValueError, match=f"{name}: expected"):
        _ops_qme.expert_fuse(**args)


def test_expert_fuse_bwd_grad_shape():
    args = expert_args()
    _ops_qme.expert_fuse_bwd(torch.ones(2, 4), **args)
    with pytest.raises(ValueError, match=r"grad: expected shape \(2, 4\)"):
        _ops_qme.expert_fuse_bwd(torch.ones(2, 3), **args)


# ---- another device's memory --------------------------------------------------------
@requires_cuda
def test_mixed_devices_are_refused_on_cuda():
    args = rank_counts_args("cuda")
    args["cand_offsets"] = args["cand_offsets"].cpu()
    with pytest.raises(ValueError, match="cand_offsets: must be on the inputs' device"):
        _ops.rank_counts(**args)
    S = torch.randn(3, 5, device="cuda")
    with pytest.raises(ValueError, match="prefixes: must be on"):
        _ops.key_histogram(S, 0, 16, torch.zeros(1, dtype=torch.int64), 16, 0)
    cos = torch.rand(2, 3, device="cuda")
    qp = torch.ones(2, dtype=torch.float64, device="cuda")
    qg = torch.ones(3, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="q_probe: must be on"):
        _ops_quality.qmagface_epilogue(cos, qp.cpu(), qg, 0.1, 0.2, torch.empty_like(cos))
    with pytest.raises(ValueError, match="out: must be on the device of cos"):
        _ops_quality.qmagface_epilogue(cos, qp, qg, 0.1, 0.2, torch.empty(2, 3))
    f, w = torch.randn(5, 4, device="cuda"), torch.rand(5, device="cuda")
    with pytest.raises(ValueError, match="offsets: must be on the device of features"):
        _ops_quality.template_aggregate(f, w, torch.tensor([0, 2, 5]), True)


@requires_cuda
def test_aggregate_templates_moves_offsets_and_weights():
    from qme_ext.quality import aggregate_templates
    f = torch.randn(5, 4, device="cuda")
    w = torch.rand(5)
    got = aggregate_templates(f, w, [0, 2, 5])
    want = aggregate_templates(f.cpu(), w, torch.tensor([0, 2, 5]))
    assert torch.allclose(got.cpu(), want, atol=1e-6)
