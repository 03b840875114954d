"""plots.ranked_lists and ``qme-ext evaluate --ranked-lists`` on hand-checked cases."""
import csv

import numpy as np
import pytest
import torch

from qme_ext import plots
from qme_ext.cli import main
from qme_ext.datasets import make_example_scoreset
from qme_ext.io import save_scores

# 3 probes (pids 0, 1, 2; camera 0) x 5 gallery entries (camera 1 unless noted)
S = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],   # p0: genuine g0 first -> AP 1
              [0.9, 0.8, 0.7, 0.6, 0.5],   # p1: genuine g2 (and g4, same camera: junk)
              [0.1, 0.2, 0.3, 0.4, 0.95]])  # p2: genuine g3 at position 1 -> AP 1/2
QP, QC = [0, 1, 2], [0, 0, 0]
GP, GC = [0, 5, 1, 2, 1], [1, 1, 1, 1, 0]


def test_worst_and_best_probes_with_junk_left_out():
    out = plots.ranked_lists(S, QP, GP, QC, GC, n=1, k=4)
    # APs: p0 = 1, p1: g4 is junk, g2 at position 2 -> 1/3, p2: 1/2
    assert [(d["group"], d["probe"]) for d in out] == [("worst", 1), ("best", 0)]
    worst, best = out
    assert worst["ap"] == pytest.approx(1 / 3) and worst["first_hit_rank"] == 3
    assert worst["gallery"].tolist() == [0, 1, 2, 3]  # g4 (junk) is not listed
    assert worst["genuine"].tolist() == [False, False, True, False]
    assert worst["score"].tolist() == [0.9, 0.8, 0.7, 0.6]
    assert best["gallery"].tolist() == [0, 1, 2, 3] and best["genuine"][0]
    assert best["gallery_pid"].tolist() == [0, 5, 1, 2]


def test_by_first_hit_rank_and_overlapping_groups():
    out = plots.ranked_lists(torch.tensor(S), QP, GP, QC, GC, n=3, k=2, by="rank")
    assert [d["probe"] for d in out if d["group"] == "worst"] == [1, 2, 0]
    assert [d["probe"] for d in out if d["group"] == "best"] == [0, 2, 1]
    assert [d["order"] for d in out] == [1, 2, 3, 1, 2, 3]
    half = plots.ranked_lists(torch.tensor(S, dtype=torch.bfloat16), QP, GP, QC, GC, n=3, k=2,
                              by="rank")
    assert [d["gallery"].tolist() for d in half] == [d["gallery"].tolist() for d in out]


def test_csv_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    img = tmp_path / "g.png"
    mpimg.imsave(img, np.random.default_rng(0).random((8, 4, 3)))
    gallery_images = [str(img), None, str(img), "", str(img)]
    out = plots.ranked_lists(S, QP, GP, QC, GC, n=1, k=3, csv_path=tmp_path / "r.csv",
                             png_path=tmp_path / "r.png", gallery_images=gallery_images)
    with open(tmp_path / "r.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and rows[0]["group"] == "worst" and rows[0]["probe"] == "1"
    assert [r["genuine"] for r in rows[:3]] == ["0", "0", "1"]
    assert [float(r["score"]) for r in rows[3:]] == [0.9, 0.8, 0.7]
    assert rows[2]["first_hit_rank"] == "3" and rows[2]["rank"] == "3"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(out) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "r.csv", "r.png"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="by"):
        plots.ranked_lists(S, QP, GP, n=1, by="map")
    with pytest.raises(ValueError, match="genuine"):
        plots.ranked_lists(S, [7, 8, 9], GP, n=1)
    with pytest.raises(ValueError, match="k"):
        plots.ranked_lists(S, QP, GP, n=1, k=0)


def test_cli_ranked_lists(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    scores = make_example_scoreset(num_probes=12, num_gallery=18, num_subjects=4, seed=1)
    save_scores(tmp_path / "ex.h5", scores)
    images = tmp_path / "gallery.txt"
    images.write_text("\n" * 18)  # every entry without an image: text cells
    row = scores.models[-1]
    prefix = tmp_path / "rl"
    rc = main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--ranked-lists", "2",
               "--ranked-row", row, "--ranked-k", "5", "--ranked-prefix", str(prefix),
               "--gallery-images", str(images)])
    assert rc == 0
    with open(f"{prefix}_{plots.safe_name(row)}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 5
    want = plots.ranked_lists(scores.score_mats[row], scores.q_pids, scores.g_pids,
                              scores.q_camids, scores.g_camids, n=2, k=5)
    assert [int(r["gallery"]) for r in rows] == [int(g) for d in want for g in d["gallery"]]
    assert (tmp_path / f"rl_{plots.safe_name(row)}.png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--ranked-lists", "1",
                 "--ranked-row", "nope"]) == 2
    assert "--ranked-row" in capsys.readouterr().err
    images.write_text("a\n")
    assert main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--ranked-lists", "1",
                 "--ranked-prefix", str(prefix), "--gallery-images", str(images)]) == 2
    assert "18 lines" in capsys.readouterr().err
