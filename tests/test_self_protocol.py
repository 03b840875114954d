"""``calibration="self"`` is the QME paper's notebook protocol (docs/definitions.rst, §3): zscore/minmax
normalise score_mat and merge_score_mat each with its own statistics, RHE uses the score
matrix's min and genuine statistics for both; ``"self-score"`` keeps the score matrix's
statistics for both."""
import numpy as np
import pytest

from qme_ext import cli
from qme_ext.datasets import make_example_scoreset
from qme_ext.fusion import fuse
from qme_ext.metrics import evaluate


def _paper_norm(norm, S, M, q_pids, g_pids):
    """The notebook's rule, literally (float64 numpy)."""
    S, M = S.astype(np.float64), M.astype(np.float64)
    if norm == "zscore":
        return [(X - X.mean()) / (X.std() + 1e-10) for X in (S, M)]
    if norm == "minmax":
        return [(X - X.min()) / (X.max() - X.min() + 1e-10) for X in (S, M)]
    gen = S[np.asarray(q_pids)[:, None] == np.asarray(g_pids)[None, :]]
    lo, div = S.min(), gen.mean() + gen.std() - S.min() + 1e-10
    return [(X - lo) / div for X in (S, M)]


def _ids(sc):
    return (sc.q_pids, sc.q_camids, sc.q_clothes_ids, sc.g_pids, sc.g_camids, sc.g_clothes_ids,
            sc.unique_g_pids)


def _paper_report(sc, norm):
    parts = [_paper_norm(norm, sc.score_mats[m], sc.merge_score_mats[m], sc.q_pids, sc.g_pids)
             for m in sc.models]
    S = np.mean([p[0] for p in parts], axis=0).astype(np.float32)
    M = np.mean([p[1] for p in parts], axis=0).astype(np.float32)
    return evaluate(S, M, *_ids(sc))


def _report(sc, norm, calibration):
    fused = fuse(sc, norm, calibration=calibration, name="f")
    return evaluate(fused.score_mats["f"], fused.merge_score_mats["f"], *_ids(sc))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("norm", ["zscore", "minmax", "rhe"])
def test_self_equals_the_paper_protocol(norm, seed):
    sc = make_example_scoreset(num_probes=80, num_gallery=160, num_subjects=30, seed=seed)
    got, want = _report(sc, norm, "self"), _paper_report(sc, norm)
    assert got.keys() == want.keys()
    for k in want:
        if "hreshold" not in k:
            assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_self_score_keeps_score_matrix_statistics():
    sc = make_example_scoreset(seed=1)
    # rhe already uses score_mat statistics for both: the two rules agree
    assert _report(sc, "rhe", "self") == _report(sc, "rhe", "self-score")
    # self-score = fitting on the test set passed as a calibration ScoreSet
    assert _report(sc, "zscore", "self-score") == _report(sc, "zscore", sc)
    with pytest.raises(ValueError, match="calibration"):
        fuse(sc, "zscore", calibration="paper")


def test_cli_calibration_choices(tmp_path, capsys):
    from qme_ext.io import save_scores
    path = tmp_path / "s.h5"
    save_scores(path, make_example_scoreset(seed=2))
    for cal in ("self", "self-score"):
        out = tmp_path / f"{cal}.json"
        assert cli.main(["evaluate", str(path), "--fusion", "zscore",
                         "--calibration", cal, "--json", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(path), "--fusion", "zscore", "--calibration",
                     "self-score", "--max-memory", "1GB", "--quiet"]) == 2
    assert "needs --calibration TRAIN.h5" in capsys.readouterr().err
