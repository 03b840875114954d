"""``.. bench-results:: [GLOB]`` — tables generated at build time from ``benchmarks/*.json``.

Two shapes are known:

* accuracy runs (``benchmarks/qme_accuracy.py --json``): ``{"recipe/regime/size/seed[/tag]":
  {"overall": {method: value}, ...}}``. One row per cell (the key without its seed): the best
  baseline by mean overall over the cell's seeds, QME's mean, QME minus that baseline, and
  QME minus the best of each run (mean, worst run, runs lost). Values are in points (percent).
* anything else: a flat table of the file's scalar entries (nested dicts flattened with dots).

A new JSON file under ``benchmarks/`` appears on the results page without editing the docs.
"""
import glob
import json
import os
from collections import defaultdict

from sphinx.util.docutils import SphinxDirective

from rst_lines import parse_lines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _is_accuracy(data):
    return isinstance(data, dict) and data and all(
        isinstance(v, dict) and isinstance(v.get("overall"), dict) for v in data.values())


def _cell_and_seed(key):
    parts = key.split("/")
    seed_at = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
    return "/".join(parts[:seed_at] + parts[seed_at + 1:]), parts[seed_at]


def accuracy_rows(data):
    """[(cell, n runs, best baseline, its mean, QME mean, mean diff, worst diff, lost)]."""
    cells = defaultdict(list)
    for key, run in data.items():
        cells[_cell_and_seed(key)[0]].append({m: 100.0 * v for m, v in run["overall"].items()})
    rows = []
    for cell, runs in cells.items():
        methods = [m for m in runs[0] if m != "qme"]
        means = {m: sum(r[m] for r in runs) / len(runs) for m in methods}
        best = max(methods, key=lambda m: means[m])
        diffs = [r["qme"] - max(r[m] for m in methods) for r in runs]
        rows.append((cell, len(runs), best, means[best], sum(r["qme"] for r in runs) / len(runs),
                     sum(diffs) / len(diffs), min(diffs), sum(d < 0 for d in diffs)))
    return rows


def _flatten(data, prefix=""):
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            yield name, value


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header, rows):
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header] + rows:
        out.append("   * - " + str(row[0]))
        out += ["     - " + str(c) for c in row[1:]]
    return out + [""]


def file_lines(path):
    with open(path) as fh:
        data = json.load(fh)
    rel = os.path.relpath(path, ROOT)
    lines = [rel, "~" * len(rel), ""]
    if _is_accuracy(data):
        lines += [f"Overall = Rank-1 + mAP + TAR@1%FAR − FNIR@1%FPIR, in points, from "
                  f"``{rel}`` ({len(data)} runs).", ""]
        rows = [[f"``{c}``", n, b, f"{bm:.1f}", f"{q:.1f}", f"{q - bm:+.2f}", f"{d:+.2f}",
                 f"{w:+.2f}", f"{lost}/{n}"]
                for c, n, b, bm, q, d, w, lost in accuracy_rows(data)]
        lines += ["Columns: the best baseline by its mean over the cell's runs, its overall, QME's, "
                  "QME minus it; then QME minus the best baseline *of each run*: mean, worst "
                  "run, runs lost.", ""]
        lines += _table(["cell", "runs", "best", "overall", "QME", "QME − best", "per run: mean",
                         "worst", "lost"], rows)
    elif isinstance(data, dict):
        lines += _table(["entry", "value"], [[f"``{k}``", _fmt(v)] for k, v in _flatten(data)])
    else:
        lines += [f"``{rel}`` holds a {type(data).__name__}; no table for this shape.", ""]
    return lines


class BenchResults(SphinxDirective):
    optional_arguments = 1

    def run(self):
        pattern = self.arguments[0] if self.arguments else "benchmarks/*.json"
        lines = []
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            self.env.note_dependency(path)
            lines += file_lines(path)
        if not lines:
            lines = [f"No file matches ``{pattern}``.", ""]
        return parse_lines(self, lines, "<bench-results>")


def setup(app):
    app.add_directive("bench-results", BenchResults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
