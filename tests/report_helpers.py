"""Shared by tests/test_streaming.py and tests/test_distributed.py: evaluation inputs
with ties, NaNs, several cameras/clothes and unenrolled probes, and a bit-for-bit
comparison of two evaluate() reports."""
import numpy as np

from conftest import make_problem


def evaluation_inputs(seed=0, P=37, G=211, n_ids=15, dtype=np.float32, nan_frac=0.02):
    """(score_mat, merge_score_mat, the seven id vectors as evaluate() takes them)."""
    S, ids = make_problem(seed, P=P, G=G, n_ids=n_ids, ties=True, nan_frac=nan_frac, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    q_pids = rng.integers(0, n_ids + 3, P)  # some probes have no gallery subject
    uniq = np.unique(ids["g_pids"])
    M = np.round(rng.normal(size=(P, uniq.size)) * 4) / 4
    M[rng.random(M.shape) < nan_frac] = np.nan
    args = (q_pids, ids["q_camids"], ids["q_clothes"], ids["g_pids"], ids["g_camids"],
            ids["g_clothes"], uniq)
    return S, M.astype(dtype), args


def assert_same_report(got: dict, want: dict) -> None:
    """Same keys in the same order and the same float64 bits for every value."""
    assert list(got) == list(want)
    diff = {k: (got[k], want[k]) for k in want
            if np.float64(got[k]).view(np.int64) != np.float64(want[k]).view(np.int64)}
    assert not diff, diff


def cli_table_and_json(tmp_path, capsys):
    """``qme-ext evaluate`` of a small example file, in memory and with ``--max-memory``:
    (table header words, table lines, [JSON report of each run], evaluate()'s report)."""
    import json

    from qme_ext import cli, metrics
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    ss = make_example_scoreset(num_probes=30, num_gallery=60, num_subjects=8, seed=2)
    save_scores(tmp_path / "t.h5", ss)
    outs = []
    for extra in ([], ["--max-memory", "20KB"]):
        out = tmp_path / f"m{len(extra)}.json"
        assert cli.main(["evaluate", str(tmp_path / "t.h5"), "--models", "face", "--json",
                         str(out), "--quiet", *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        outs.append(json.loads(out.read_text())["face"])
    want = metrics.evaluate(ss.score_mats["face"], ss.merge_score_mats["face"], ss.q_pids,
                            ss.q_camids, ss.q_clothes_ids, ss.g_pids, ss.g_camids,
                            ss.g_clothes_ids, ss.unique_g_pids)
    return lines[0].split(), lines, outs, want


def hand_case():
    """(S (3, 5), q_pids, q_cams, g_pids, g_cams) of the mINP / R-precision hand cases:
    probe 0 (pid 1, cam 0) sees in score order g0 (pid 1, cam 1, good), g1 (pid 2),
    g2 (pid 1, cam 0, junk), g3 (pid 3), g4 (pid 1, cam 2, good); probe 1 (pid 2) sees its
    only good g1 at position 1; probe 2 (pid 9) has no good entry."""
    S = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                  [0.9, 0.8, 0.7, 0.6, 0.5],
                  [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2, 9]), np.array([0, 0, 0])
    g_pids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([1, 1, 0, 0, 2])
    return S, q_pids, q_cams, g_pids, g_cams
