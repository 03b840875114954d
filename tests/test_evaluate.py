"""metrics.evaluate: the QME reference protocol, keys and values, against evaluate_ref."""
import numpy as np
import pytest
import torch

from conftest import to_device
from qme_ext import metrics
from qme_ext.reference import evaluate_ref

EXPECTED_KEYS = (
    [f"{m}_{k}" for m in ("GR", "SC", "CC") for k in ("top1", "top5", "top10", "top20", "mAP", "mINP",
                                                         "RP", "MAP@R")]
    + [f"TAR@{f}%FAR" for f in ("0.01", "0.10", "1.00")]
    + [f"Threshold@{f}%FAR" for f in ("0.01", "0.10", "1.00")]
    + [f"TPIR@{f}%FPIR" for f in ("0.01", "0.10", "1.00")]
    + [f"FNIR@{f}%FPIR" for f in ("0.01", "0.10", "1.00")]
    + [f"FNIR@{f}%FPIR_threshold" for f in ("0.01", "0.10", "1.00")]
    + ["num_probe_templates", "num_probe_subjects", "num_gallery_subjects",
       "num_galley1_templates", "num_gallary1_subjects"]
    + [f"TPIR@{f}%FPIR_std" for f in ("0.01", "0.10", "1.00")]
    + [f"FNIR@{f}%FPIR_std" for f in ("0.01", "0.10", "1.00")]
)


def wholebody_like(seed=0, P=120, n_sub=30, per_sub=6, dtype=np.float32):
    """Score file contents shaped like the QME scoremats layout."""
    rng = np.random.default_rng(seed)
    subjects = np.arange(100, 100 + n_sub)
    g_pids = np.repeat(subjects, per_sub)
    G = g_pids.size
    g_cam = rng.integers(0, 4, G)
    g_clo = rng.integers(0, 3, G)
    q_pids = rng.choice(np.concatenate([subjects, [999, 998]]), P)
    q_cam = rng.integers(0, 4, P)
    q_clo = rng.integers(0, 3, P)
    S = rng.normal(size=(P, G)) + 2.5 * (q_pids[:, None] == g_pids[None, :])
    M = np.stack([S[:, g_pids == s].mean(axis=1) for s in subjects], axis=1)
    return dict(score_mat=S.astype(dtype), merge_score_mat=M.astype(dtype), q_pids=q_pids,
                q_camids=q_cam, q_clothes_ids=q_clo, g_pids=g_pids, g_camids=g_cam,
                g_clothes_ids=g_clo, unique_g_pids=subjects)


def test_keys_are_exactly_the_reference_keys():
    d = wholebody_like()
    out = metrics.evaluate(**d)
    assert list(out) == EXPECTED_KEYS
    assert list(evaluate_ref(**d)) == EXPECTED_KEYS


@pytest.mark.parametrize("seed", [0, 1])
def test_values_equal_reference(device, seed):
    d = wholebody_like(seed)
    ref = evaluate_ref(**d)
    dd = dict(d, score_mat=to_device(d["score_mat"], device),
              merge_score_mat=to_device(d["merge_score_mat"], device))
    out = metrics.evaluate(**dd)
    for k, v in ref.items():
        if np.isnan(v):
            assert np.isnan(out[k]), k
        else:
            assert out[k] == pytest.approx(v, rel=0, abs=1e-12), k


def test_seed_changes_only_open_set():
    d = wholebody_like(2)
    a = metrics.evaluate(**d, seed=45)
    b = metrics.evaluate(**d, seed=46)
    assert a["GR_mAP"] == b["GR_mAP"] and a["TAR@1.00%FAR"] == b["TAR@1.00%FAR"]
    assert any(a[k] != b[k] for k in a if "FPIR" in k)


def test_float_stored_ids_and_tensors():
    d = wholebody_like(3)
    ref = metrics.evaluate(**d)
    d2 = {k: (v.astype(np.float64) if k.endswith(("pids", "ids")) else v) for k, v in d.items()}
    d2["score_mat"] = torch.from_numpy(d["score_mat"])
    assert metrics.evaluate(**d2) == ref


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        metrics.evaluate(**wholebody_like(), protocol="nist")
