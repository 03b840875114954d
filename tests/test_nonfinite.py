"""Non-finite scores are reported: NonFiniteScoreWarning from metrics.evaluate (counts on
the warning), one stderr line per model and ``num_nonfinite`` in ``qme-ext evaluate --json``."""
import json
import warnings

import numpy as np
import pytest

from qme_ext import cli
from qme_ext.datasets import make_example_scoreset
from qme_ext.io import save_scores
from qme_ext.metrics import evaluate
from qme_ext.metrics.nonfinite import NonFiniteScoreWarning

ZERO = {"nan": 0, "posinf": 0, "neginf": 0}


def _ids(sc):
    return (sc.q_pids, sc.q_camids, sc.q_clothes_ids, sc.g_pids, sc.g_camids, sc.g_clothes_ids,
            sc.unique_g_pids)


def _broken(seed=0):
    sc = make_example_scoreset(seed=seed)
    S = sc.score_mats["face"].copy()
    S[0, 0], S[1, 1], S[2, 2] = np.nan, np.inf, np.nan
    M = sc.merge_score_mats["face"].copy()
    M[3, 0] = -np.inf
    return _replace(sc, S, M)


def _replace(sc, S, M):
    sc.score_mats["face"], sc.merge_score_mats["face"] = S, M
    return sc


def test_evaluate_warns_with_counts():
    sc = _broken()
    with pytest.warns(NonFiniteScoreWarning) as rec:
        got = evaluate(sc.score_mats["face"], sc.merge_score_mats["face"], *_ids(sc))
    (w,) = [r for r in rec if r.category is NonFiniteScoreWarning]
    assert w.message.counts == {"score_mat": {"nan": 2, "posinf": 1, "neginf": 0},
                                "merge_score_mat": {"nan": 0, "posinf": 0, "neginf": 1}}
    assert str(w.message).startswith("score_mat 2 NaN (-> the minimum non-NaN score")
    assert "merge_score_mat 1 -inf" in str(w.message)
    assert set(got) == set(evaluate(sc.score_mats["body"], sc.merge_score_mats["body"],
                                    *_ids(sc)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(sc.score_mats["body"], sc.merge_score_mats["body"], *_ids(sc))


def test_cli_evaluate_reports_nonfinite(tmp_path, capsys):
    path, out = tmp_path / "s.h5", tmp_path / "r.json"
    save_scores(path, _broken(1))
    assert cli.main(["evaluate", str(path), "--json", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qme-ext: warning: face: score_mat 2 NaN")
    rep = json.loads(out.read_text())
    assert rep["face"]["num_nonfinite"]["score_mat"] == {"nan": 2, "posinf": 1, "neginf": 0}
    assert rep["body"]["num_nonfinite"] == {"score_mat": ZERO, "merge_score_mat": ZERO}


def test_cli_evaluate_out_of_core_reports_the_same(tmp_path, capsys):
    path = tmp_path / "s.h5"
    save_scores(path, _broken(2))
    reports, errs = [], []
    for extra in ([], ["--max-memory", "20KB"]):
        out = tmp_path / f"r{len(extra)}.json"
        assert cli.main(["evaluate", str(path), "--json", str(out), "--quiet", *extra]) == 0
        reports.append(json.loads(out.read_text()))
        errs.append(capsys.readouterr().err)
    assert reports[0] == reports[1] and errs[0] == errs[1]
    assert reports[1]["face"]["num_nonfinite"]["merge_score_mat"]["neginf"] == 1
