"""Out-of-core evaluation: row blocks give the in-memory report bit for bit, in memory
(evaluate(block_rows=...)), from a score file (evaluate_file) and on the command line
(qme-ext evaluate --max-memory)."""
import json

import numpy as np
import pytest
import torch

from conftest import to_device
from qme_ext import cli, metrics, streaming
from qme_ext.datasets import make_example_scoreset
from qme_ext.fusion import fuse
from qme_ext.io import load_scores, save_scores
from report_helpers import assert_same_report, evaluation_inputs

P = 37  # probes of evaluation_inputs(): 1, 5 and 8 do not divide it


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_row_blocks_equal_one_block(device, dtype):
    S, M, ids = evaluation_inputs(0, dtype=dtype)
    S, M = to_device(S, device), to_device(M, device)
    whole = metrics.evaluate(S, M, *ids)
    for block_rows in (1, 5, 8, P, 1000):
        assert_same_report(metrics.evaluate(S, M, *ids, block_rows=block_rows), whole)


def test_one_block_equals_the_reference():
    from qme_ext.reference import evaluate_ref
    S, M, ids = evaluation_inputs(1, nan_frac=0.0)
    out, ref = metrics.evaluate(S, M, *ids, block_rows=4), evaluate_ref(S, M, *ids)
    for k, v in ref.items():
        assert out[k] == pytest.approx(v, rel=0, abs=1e-12) or (np.isnan(v) and np.isnan(out[k]))


def test_block_rows_is_checked():
    S, M, ids = evaluation_inputs(0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="block_rows"):
            metrics.evaluate(S, M, *ids, block_rows=bad)


@pytest.fixture(scope="module")
def score_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("streaming")
    # 163 gallery entries and 17 subjects: rows whose length is no multiple of a SIMD
    # width, so vectorised element-wise code meets its scalar tails in 1-row blocks
    test = make_example_scoreset(num_probes=53, num_gallery=163, num_subjects=17, seed=5)
    cal = make_example_scoreset(num_probes=40, num_gallery=90, num_subjects=17, seed=6)
    save_scores(d / "test.h5", test)
    save_scores(d / "cal.h5", cal)
    return d / "test.h5", d / "cal.h5"


def _ids(ss):
    return (ss.q_pids, ss.q_camids, ss.q_clothes_ids, ss.g_pids, ss.g_camids, ss.g_clothes_ids,
            ss.unique_g_pids)


def test_evaluate_file_equals_in_memory(score_files):
    path, _ = score_files
    ss = load_scores(path)
    for m in ss.models:
        whole = metrics.evaluate(ss.score_mats[m], ss.merge_score_mats[m], *_ids(ss))
        configs = [{}, dict(block_rows=10)]
        if m == "face":
            configs += [dict(block_rows=1), dict(max_memory="3KiB")]
        for kw in configs:
            assert_same_report(metrics.evaluate_file(path, m, **kw), whole)


def _same_boot_report(got, want):
    assert list(got) == list(want) and list(got.replicates) == list(want.replicates)
    for k in want:
        assert np.array_equal(np.asarray(got[k]), np.asarray(want[k]), equal_nan=True), k
    for k in want.replicates:
        assert np.array_equal(got.replicates[k], want.replicates[k], equal_nan=True), k


def test_evaluate_file_intervals_equal_in_memory(score_files):
    """ci=... out of core: the in-memory intervals and replicates, bit for bit, for any
    block size (the TAR replicates re-read the file for the impostors they need)."""
    path, cal_path = score_files
    ss = load_scores(path)
    boot = dict(ci=0.95, n_boot=50, boot_seed=2)
    whole = metrics.evaluate(ss.score_mats["body"], ss.merge_score_mats["body"], *_ids(ss),
                             **boot)
    for kw in (dict(block_rows=1), dict(block_rows=10), dict(max_memory="3KiB")):
        _same_boot_report(metrics.evaluate_file(path, "body", **kw, **boot), whole)
    fused = fuse(ss, "zscore", calibration=load_scores(cal_path), name="f")
    want = metrics.evaluate(fused.score_mats["f"], fused.merge_score_mats["f"], *_ids(ss),
                            boot_unit="probe", **boot)
    got = metrics.evaluate_file(path, fusion="zscore", calibration=cal_path, block_rows=4,
                                boot_unit="probe", **boot)
    _same_boot_report(got, want)


@pytest.mark.parametrize("method", ["zscore", "minmax", "tanh", "rhe", "max", "weighted",
                                    "asym_ao", "bssf", "farsight_style"])
def test_fused_file_equals_in_memory_fusion(score_files, method):
    path, cal_path = score_files
    ss, cal = load_scores(path), load_scores(cal_path)
    fused = fuse(ss, method, calibration=cal, name="f")
    whole = metrics.evaluate(fused.score_mats["f"], fused.merge_score_mats["f"], *_ids(ss))
    for kw in (dict(block_rows=3), dict(max_memory="60KB")):
        got = metrics.evaluate_file(path, fusion=method, calibration=cal_path, **kw)
        assert_same_report(got, whole)


def test_memory_budget_sets_the_block_size(score_files):
    path, _ = score_files
    from qme_ext.io import load_ids
    names, ids, shapes = load_ids(path, ["face"])
    group = int(np.unique(ids["g_pids"], return_counts=True)[1].max())
    row = streaming.bytes_per_row(163, 17, group)
    assert row == 4 * (163 + 17) + streaming.CANDIDATE_BYTES * group
    assert streaming.plan_block_rows(names, ids, shapes, False, 5 * row) == 5
    assert streaming.plan_block_rows(names, ids, shapes, False, 5 * row - 1) == 4
    assert streaming.plan_block_rows(names, ids, shapes, False, None) == 53
    src = streaming.FileSource(path, "face", shapes, 5)
    sizes = [b.rows.stop - b.rows.start for b in src.blocks(scores=True, merge=True)]
    assert sizes == [5] * 10 + [3]
    with pytest.raises(ValueError, match="less than one probe row"):
        streaming.plan_block_rows(names, ids, shapes, False, row - 1)
    fused_row = streaming.bytes_per_row(163, 17, 1, num_models=3, fused=True)
    assert fused_row == 4 * 180 * 3 + streaming.CANDIDATE_BYTES + 8 * 180


def test_file_blocks_are_freed_before_the_next_read(score_files, monkeypatch):
    import weakref
    from qme_ext.io import iter_row_blocks, load_ids
    path, _ = score_files
    _, _, shapes = load_ids(path, ["face"])
    read, alive_at_read = [], []  # weak references to the arrays read; how many live on

    class Watched:  # an iterator that keeps no reference to what it returned
        def __init__(self, *args):
            self.inner = iter_row_blocks(*args)

        def __iter__(self):
            return self

        def __next__(self):
            alive_at_read.append(sum(r() is not None for r in read))
            item = next(self.inner)
            read.append(weakref.ref(item[1]))
            return item

    monkeypatch.setattr(streaming, "iter_row_blocks", Watched)
    blocks = streaming.FileSource(path, "face", shapes, 10).blocks(scores=True, merge=True)
    first = next(blocks)
    second = next(blocks)
    third = next(blocks)
    assert first.scores is None and first.merge is None and second.scores is None
    assert [r() is None for r in read] == [True] * 4 + [False] * 2
    # a block's score rows are read when nothing of the previous block is alive
    # (its merge rows: with the same block's score rows alive)
    assert alive_at_read == [0, 1, 0, 1, 0, 1]
    assert tuple(third.scores.shape) == (10, 163) and third.rows == slice(20, 30)


@pytest.mark.parametrize("text, expected", [
    ("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", 3 * 2**29), ("64k", 65536),
    ("1000", 1000), ("3 kb", 3000), (10**9, 10**9), ("1e6", 10**6), ("7B", 7)])
def test_parse_memory(text, expected):
    assert streaming.parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "2 XB", "-1GB", "0", "GB", None, [1]])
def test_parse_memory_refuses(bad):
    with pytest.raises(ValueError, match="max_memory"):
        streaming.parse_memory(bad)


def test_evaluate_file_user_errors(score_files):
    path, cal_path = score_files
    with pytest.raises(ValueError, match="exactly one"):
        metrics.evaluate_file(path, "face", fusion="zscore", calibration=cal_path)
    with pytest.raises(ValueError, match="calibration"):
        metrics.evaluate_file(path, fusion="zscore")
    with pytest.raises(ValueError, match="at most one"):
        metrics.evaluate_file(path, "face", block_rows=3, max_memory="1MB")
    with pytest.raises(ValueError, match="unknown model"):
        metrics.evaluate_file(path, "iris")


def _cli_json(capsys, tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    assert cli.main(["evaluate", *map(str, args), "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    return out.read_bytes(), table


def test_cli_max_memory_matches_in_memory(score_files, tmp_path, capsys):
    path, cal_path = score_files
    common = (path, "--fusion", "zscore,asym_ao", "--calibration", cal_path)
    whole, table = _cli_json(capsys, tmp_path, "whole", *common)
    for budget in ("40KB", "1GiB"):
        streamed, table_s = _cli_json(capsys, tmp_path, budget, *common, "--max-memory", budget)
        assert streamed == whole and table_s == table
    rows = json.loads(whole)
    assert list(rows) == ["face", "body", "gait", "zscore", "asym_ao"]


@pytest.mark.parametrize("args, needle", [
    (["--max-memory", "lots"], "invalid --max-memory 'lots'"),
    (["--max-memory", "-5"], "invalid --max-memory"),
    (["--max-memory", "100B"], "less than one probe row"),
    (["--max-memory", "1GB", "--fusion", "zscore"], "--calibration TRAIN.h5"),
    (["--max-memory", "1GB", "--models", "iris"], "unknown model"),
])
def test_cli_max_memory_user_errors(score_files, tmp_path, capsys, args, needle):
    path, _ = score_files
    assert cli.main(["evaluate", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qme-ext: error: ") and needle in err


def test_tensor_source_blocks_are_views():
    from qme_ext.metrics.accumulate import TensorSource
    S = torch.randn(10, 4)
    blocks = list(TensorSource(S, None, 4).blocks(scores=True))
    assert [b.rows for b in blocks] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert all(b.scores.data_ptr() == S[b.rows].data_ptr() and b.merge is None for b in blocks)


def test_curves_out_of_core_lie_on_the_in_memory_curves(score_files):
    """curves_file: every sampled ROC/DET point is a point of the exact ROC; CMC and the
    histograms equal the loaded matrix's, whatever the block size."""
    from qme_ext.plots import curves_of_matrix
    from qme_ext.streaming import curves_file
    path, cal_path = score_files
    ss = load_scores(path)
    full = curves_of_matrix(ss.score_mats["face"], ss)
    exact = set(zip(full["roc"][0].tolist(), full["roc"][1].tolist()))
    for block_rows in (3, None):
        got = curves_file(path, "face", block_rows=block_rows)
        far, tar = got["roc"]
        assert len(far) > 10 and all((f, t) in exact for f, t in zip(far, tar))
        assert np.array_equal(got["det"][1], 1.0 - tar)
        assert np.array_equal(got["cmc"], full["cmc"])
        for a, b in zip(got["hist"], full["hist"]):
            assert np.array_equal(a, b)
    fused = curves_file(path, fusion="zscore", calibration=cal_path, max_memory="40KB")
    assert set(fused) == {"roc", "det", "cmc", "hist"}


def test_cli_max_memory_plots(score_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, cal_path = score_files
    out = tmp_path / "plots"
    assert cli.main(["evaluate", str(path), "--max-memory", "40KB", "--fusion", "zscore",
                     "--calibration", str(cal_path), "--plots", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cmc.png", "det.png", "roc.png", "score_hist_body.png",
                     "score_hist_face.png", "score_hist_gait.png", "score_hist_zscore.png"]
    assert all((out / n).stat().st_size > 1000 for n in names)
