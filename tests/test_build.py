"""Build facts and backend selection."""
import pytest

import qme_ext
from qme_ext.ops import backend as _backend


def test_build_config_fields():
    cfg = qme_ext.build_config()
    for key in ("version", "cuda_compiled", "cuda_runtime_version", "cuda_architectures",
                "threads", "cuda_available"):
        assert key in cfg
    assert cfg["version"] == qme_ext.__version__
    assert cfg["threads"] >= 1
    assert cfg["cuda_compiled"] == qme_ext.cuda_compiled()
    if cfg["cuda_compiled"]:
        assert cfg["cuda_runtime_version"] and "90" in cfg["cuda_architectures"]


def test_cuda_available_implies_compiled():
    assert not qme_ext.cuda_available() or qme_ext.cuda_compiled()


def test_a_gpu_torch_sees_is_not_silently_skipped():
    """Where torch sees a GPU and the CUDA module was built, the module must see it too:
    otherwise (e.g. a driver older than the statically linked CUDA runtime) every CUDA
    test would skip and the run would look green with no kernel run."""
    import torch
    if not (qme_ext.cuda_compiled() and torch.cuda.is_available()):
        pytest.skip("needs the CUDA module and a GPU visible to torch")
    cfg = qme_ext.build_config()
    assert cfg["cuda_device_count"] == torch.cuda.device_count() > 0, cfg
    assert qme_ext.cuda_available(), cfg


def test_missing_cuda_module_error_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_backend, "_C_cuda", None)
    assert not _backend.cuda_available()
    with pytest.raises(_backend.BuildError, match="QME_CUDA=ON"):
        _backend.cuda_module()


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        qme_ext.set_num_threads(0)
