"""The command line as a user runs it: ``python -m qme_ext ...`` in a subprocess."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qme_ext.cli import TABLE_COLUMNS
from qme_ext.datasets import make_example_scoreset
from qme_ext.io import load_scores, save_scores

SMALL = ["--probes", "24", "--gallery", "36", "--subjects", "6"]


def run_cli(*args, cwd):
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "qme_ext", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = run_cli("example", "ex.h5", *SMALL, "--seed", "4", cwd=d)
    assert r.returncode == 0, r.stderr
    return d / "ex.h5"


def test_example_file_is_deterministic_and_valid(example, tmp_path):
    s = load_scores(example)
    assert s.models == ["face", "body", "gait"]
    assert s.score_mats["face"].shape == (24, 36) and s.merge_score_mats["gait"].shape == (24, 6)
    assert s.quality["face_weights"].shape == (24, 1)
    ref = make_example_scoreset(num_probes=24, num_gallery=36, num_subjects=6, seed=4)
    np.testing.assert_array_equal(s.score_mats["body"], ref.score_mats["body"])
    # subject-level scores are the per-subject means of the gallery scores
    j = 2
    cols = s.g_pids == s.unique_g_pids[j]
    np.testing.assert_allclose(s.merge_score_mats["face"][:, j],
                               s.score_mats["face"][:, cols].mean(1), rtol=1e-5)


def test_evaluate_table_json_plots(example, tmp_path):
    pytest.importorskip("matplotlib")  # a test extra; the GPU machine may lack it
    out_json = tmp_path / "m.json"
    plots = tmp_path / "plots"
    r = run_cli("evaluate", example, "--fusion", "zscore,zscore:max", "--json", out_json,
                "--plots", plots, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    header = lines[0].split()
    assert header[0] == "Row" and header[1:] == [c[0] for c in TABLE_COLUMNS]
    rows = [ln.split()[0] for ln in lines[2:]]
    assert rows == ["face", "body", "gait", "zscore", "zscore:max"]
    assert "±" in lines[2]
    assert "evaluating zscore" in r.stderr  # progress lines on stderr

    data = json.loads(out_json.read_text())
    assert list(data) == rows
    for res in data.values():
        for key in ["GR_top1", "GR_top20", "GR_mAP", "SC_top1", "CC_mAP", "TAR@0.01%FAR",
                    "TAR@1.00%FAR", "Threshold@1.00%FAR", "TPIR@1.00%FPIR", "FNIR@1.00%FPIR",
                    "FNIR@1.00%FPIR_std", "FNIR@0.01%FPIR_threshold"]:
            assert key in res
        assert 0.0 <= res["GR_top1"] <= 1.0
    # the table shows the JSON values in percent
    first = lines[2].split()
    assert float(first[1]) == pytest.approx(100 * data["face"]["GR_top1"], abs=0.006)

    names = ["roc.png", "det.png", "cmc.png"] + [f"score_hist_{n}.png" for n in
                                                 ["face", "body", "gait", "zscore", "zscore_max"]]
    for name in names:
        p = plots / name
        assert p.is_file() and p.stat().st_size > 1000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_models_and_calibration(example, tmp_path):
    cal = tmp_path / "cal.h5"
    save_scores(cal, make_example_scoreset(num_probes=20, num_gallery=36, num_subjects=6, seed=9))
    r = run_cli("evaluate", example, "--models", "gait,face", "--fusion", "minmax",
                "--calibration", cal, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert [ln.split()[0] for ln in r.stdout.strip().splitlines()[2:]] == ["gait", "face", "minmax"]


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "absent.h5"], "no such file"),
    (["evaluate", "{ex}", "--models", "face,nose"], "nose"),
    (["evaluate", "{ex}", "--fusion", "zscore,bogus"], "bogus"),
    (["evaluate", "garbage.h5"], "not an HDF5 file"),
    (["evaluate", "{ex}", "--fusion", "mean", "--calibration", "absent_cal.h5"], "absent_cal.h5"),
    (["evaluate", "{ex}", "--device", "nonsense"], "device"),
    (["evaluate", "{ex}", "--device", "meta"], "expected cpu or cuda"),
    (["evaluate", "{ex}", "--device", "cuda:7", "--max-memory", "1GB"], "cuda"),
    (["evaluate", "{ex}", "--protocol", "nist9"], "nist9"),
    (["evaluate", "{ex}", "--ci", "1.5"], "--ci"),
    (["evaluate", "{ex}", "--ci", "0.9", "--n-boot", "1"], "--n-boot"),
    (["evaluate", "{ex}", "--compare", "face"], "two different rows"),
    (["evaluate", "{ex}", "--compare", "face,nose"], "no row 'nose'"),
    (["evaluate"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line(example, tmp_path, args, needle):
    (tmp_path / "garbage.h5").write_text("this is not HDF5")
    r = run_cli(*[a.format(ex=example) for a in args], cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith("qme-ext: error:") and needle in err[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_plots_skipped_without_matplotlib(example, tmp_path, monkeypatch, capsys):
    from qme_ext import cli, plots
    monkeypatch.setattr(plots, "available", lambda: False)
    assert cli.main(["evaluate", str(example), "--models", "face", "--plots",
                     str(tmp_path / "p"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "matplotlib is not installed" in captured.err
    assert not (tmp_path / "p").exists()
    assert captured.out.splitlines()[2].split()[0] == "face"


def test_evaluate_intervals_and_paired_comparison(example, tmp_path):
    """--ci/--compare: the JSON holds the Python API's intervals and comparison, the table
    prints them, and the out-of-core path writes the same JSON."""
    from qme_ext import fusion, metrics
    common = ["evaluate", example, "--fusion", "zscore", "--ci", "0.9", "--n-boot", "200",
              "--boot-seed", "3", "--compare", "zscore,face", "--quiet"]
    r = run_cli(*common, "--json", tmp_path / "a.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "a.json").read_text())
    assert list(data) == ["face", "body", "gait", "zscore", "compare"]
    ss = load_scores(example)
    ids = (ss.q_pids, ss.q_camids, ss.q_clothes_ids, ss.g_pids, ss.g_camids, ss.g_clothes_ids,
           ss.unique_g_pids)
    fused = fusion.fuse(ss, "zscore", calibration="self", name="zscore")
    boot = dict(ci=0.9, n_boot=200, boot_seed=3)
    face = metrics.evaluate(ss.score_mats["face"], ss.merge_score_mats["face"], *ids, **boot)
    z = metrics.evaluate(fused.score_mats["zscore"], fused.merge_score_mats["zscore"], *ids,
                         **boot)
    for key in ("GR_top1", "GR_mAP", "TAR@1.00%FAR", "FNIR@1.00%FPIR"):
        assert data["face"][key + "_ci"] == list(face[key + "_ci"])
        assert data["zscore"][key + "_ci"] == list(z[key + "_ci"])
    want = metrics.compare(z, face)
    got = data["compare"]["zscore - face"]
    assert got["GR_mAP"] == {"diff": want["GR_mAP"]["diff"], "ci": list(want["GR_mAP"]["ci"]),
                             "p_value": want["GR_mAP"]["p_value"]}
    lo, hi = face["GR_top1_ci"]
    assert f"{100 * face['GR_top1']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in r.stdout
    assert "zscore - face: paired bootstrap over probe subjects, 200 replicates" in r.stdout
    mAP_line = [ln for ln in r.stdout.splitlines() if ln.startswith("mAP ")][0]
    assert f"{100 * want['GR_mAP']['diff']:+.2f}" in mAP_line
    # out of core: the same report, bit for bit
    r2 = run_cli(*common, "--json", tmp_path / "b.json", "--max-memory", "1GB",
                 "--calibration", example, cwd=tmp_path)
    r3 = run_cli(*common, "--json", tmp_path / "c.json", "--calibration", example,
                 cwd=tmp_path)
    assert r2.returncode == 0 and r3.returncode == 0, r2.stderr + r3.stderr
    assert (tmp_path / "b.json").read_bytes() == (tmp_path / "c.json").read_bytes()
