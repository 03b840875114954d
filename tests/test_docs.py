"""The documentation is built and its examples run, so it cannot drift from the code.

* ``sphinx-build -W`` over ``docs/`` (warnings are errors; skipped only where Sphinx is not
  installed: it comes with the ``docs`` extra);
* every ``.. code-block:: python`` of ``docs/**/*.rst`` and every ```` ```python ```` block of
  README.md is executed, each in a fresh namespace inside an empty temporary folder
  (shell examples use ``console``/``bash`` and are not run);
* README.md's test command is exactly what ``.ci/run`` runs, and README stays short.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qme_ext

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def rst_python_blocks(path: Path):
    """[(first line number, code)] of the ``.. code-block:: python`` blocks of an rst file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)\.\. code-block::\s*python3?\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent = len(m.group(1))
        while i < len(lines) and re.match(r"^\s+:\w[\w-]*:", lines[i]):
            i += 1  # directive options (:caption: ...)
        start, body = i, []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append((start + 1, textwrap.dedent("\n".join(body)).strip("\n") + "\n"))
    return blocks


def markdown_python_blocks(path: Path):
    """[(first line number, code)] of the ```` ```python ```` blocks of a Markdown file."""
    blocks, body, start = [], None, 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if body is None and re.match(r"^```python\s*$", line):
            body, start = [], n + 1
        elif body is not None and line.startswith("```"):
            blocks.append((start, "\n".join(body) + "\n"))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def _all_blocks():
    out = []
    for path in sorted(DOCS.rglob("*.rst")):
        out += [(path, n, code) for n, code in rst_python_blocks(path)]
    out += [(README, n, code) for n, code in markdown_python_blocks(README)]
    return out


BLOCKS = _all_blocks()


def test_the_extractors_find_blocks(tmp_path):
    assert len(BLOCKS) >= 10, "the docs' python examples were not found"
    assert any(p == README for p, _, _ in BLOCKS), "README.md has no python block"
    rst = tmp_path / "probe.rst"
    rst.write_text("x\n\n.. code-block:: python\n   :caption: c\n\n   a = 1\n\n   b = a\n\n"
                   "after\n\n.. code-block:: console\n\n   $ ls\n")
    assert rst_python_blocks(rst) == [(5, "a = 1\n\nb = a\n")]
    md = tmp_path / "probe.md"
    md.write_text("t\n```python\nimport os\n```\n```bash\nls\n```\n")
    assert markdown_python_blocks(md) == [(3, "import os\n")]


@pytest.mark.parametrize("path,line,code", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in BLOCKS])
def test_code_block_runs(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), namespace)


def _ci_command() -> str:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")
            and not ln.startswith(("set ", "cd "))][-1]


def test_readme_test_command_is_ci():
    command = _ci_command()
    assert "pytest" in command and "[test,docs]" in command
    assert command in README.read_text(encoding="utf-8").splitlines()


_REPO_PATH = re.compile(r"(?<![\w/.-])((?:csrc|python|src|tests|benchmarks|examples|docs|\.ci)"
                        r"/[\w./-]*\w)")


def test_every_repository_path_named_by_the_docs_exists():
    """Paths such as ``csrc/cpu/parallel.h`` or ``benchmarks/bench_streaming.py`` in the docs,
    README.md and CONTRIBUTING.md name files that exist (build outputs excepted)."""
    missing = []
    for path in sorted(DOCS.rglob("*.rst")) + [README, ROOT / "CONTRIBUTING.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in _REPO_PATH.finditer(line):
                name = m.group(1)
                if not name.startswith("docs/_build") and not (ROOT / name).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert not missing, "\n".join(missing)


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


def test_sphinx_build_has_no_warning(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is in the docs extra: pip install '.[docs]'")
    env = dict(os.environ)
    package_root = str(Path(qme_ext.__file__).resolve().parents[1])  # the qme_ext under test
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in
                                         env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
                           "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
                           str(tmp_path / "html")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for page in ("index", "definitions", "architecture", "cli", "results", "api/metrics"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    cli = (tmp_path / "html" / "cli.html").read_text(encoding="utf-8")
    assert "qme-ext evaluate" in cli and "--max-memory" in cli  # generated from the parser
    results = (tmp_path / "html" / "results.html").read_text(encoding="utf-8")
    assert "qme_accuracy_heldout.json" in results  # generated from benchmarks/*.json
