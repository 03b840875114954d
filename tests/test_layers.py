"""The package's layers (issue 13): every module of ``qme_ext`` imports only modules of
its own layer or of the layers below, the import graph has no circles, and the product
never imports its test oracle. The imports are read with ``ast`` (also those inside
functions, which run later but still run back up); nothing is imported."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "qme_ext"

# The layers, lowest first, written once. A module belongs to the first entry whose
# prefix names it or a package above it.
LAYERS = [
    ["qme_ext._version"],
    ["qme_ext.ops"],  # custom ops: the only code that calls _C / _C_cuda
    ["qme_ext.top_k", "qme_ext.io", "qme_ext.quality", "qme_ext.datasets"],
    ["qme_ext.fusion", "qme_ext.rerank"],  # rerank: score post-processing on top_k
    ["qme_ext.metrics"],  # public API, blockwise passes, out of core, sharded
    ["qme_ext.plots", "qme_ext.qme"],
    ["qme_ext.reference"],  # the test oracle: it may import the product, never the reverse
    ["qme_ext.cli", "qme_ext.__main__"],
    ["qme_ext.streaming", "qme_ext.distributed"],  # public aliases of metrics.*
    ["qme_ext"],  # the package facade
]


def _module_name(path: pathlib.Path) -> str:
    parts = ["qme_ext", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports(module: str) -> set:
    path = MODULES[module]
    return _imports_of(module, path.read_text(), path.name == "__init__.py")


def _imports_of(module: str, text: str, is_pkg: bool) -> set:
    """The qme_ext modules that the source `text` of `module` imports (a name imported
    from a package counts as that submodule when one exists, else as the package)."""
    package = module if is_pkg else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "qme_ext")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "qme_ext":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    out.discard(module)
    return {m for m in out if m in MODULES}


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_its_layer_or_below(module):
    mine = _layer(module)
    up = sorted(t for t in GRAPH[module] if _layer(t) > mine)
    assert not up, f"{module} (layer {mine}) imports from higher layers: {up}"


def test_no_import_circles():
    # Tarjan's strongly connected components; a component of more than one module is a
    # circle. A package's facade importing its own submodules is no circle unless a
    # submodule imports the facade back.
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_product_never_imports_the_reference():
    product = [m for m in MODULES if not m.startswith("qme_ext.reference")]
    for m in product:
        bad = sorted(t for t in GRAPH[m] if t.startswith("qme_ext.reference"))
        assert not bad, f"{m} imports the test oracle: {bad}"


def test_only_ops_call_the_compiled_modules():
    for m, path in MODULES.items():
        if m.startswith("qme_ext.ops"):
            continue
        text = path.read_text()
        assert "qme_ext._C" not in text and "import _C" not in text, m


def test_public_import_paths():
    import importlib
    import qme_ext
    for name in ("metrics", "distributed", "streaming", "fusion", "io", "qme", "quality",
                 "cli", "plots", "datasets", "reference"):
        importlib.import_module(f"qme_ext.{name}")
    from qme_ext import distributed, metrics, streaming
    assert streaming is metrics.streaming and distributed is metrics.distributed
    assert callable(qme_ext.topk) and qme_ext.topk.__module__ == "qme_ext.top_k"
    for name in metrics.__all__:
        assert hasattr(metrics, name), name


def test_the_checker_sees_violations():
    """The checker itself on made-up sources: an upward import (also inside a function)
    and an import of the oracle are seen."""
    up = _imports_of("qme_ext.ops.keys", "def f():\n    from ..cli import main\n", False)
    assert up == {"qme_ext.cli"} and _layer("qme_ext.cli") > _layer("qme_ext.ops.keys")
    oracle = _imports_of("qme_ext.metrics.core", "from ..reference.metrics import qme_splits",
                         False)
    assert oracle == {"qme_ext.reference.metrics"}
    sub = _imports_of("qme_ext.metrics", "from . import core, streaming", True)
    assert sub == {"qme_ext.metrics.core", "qme_ext.metrics.streaming"}
