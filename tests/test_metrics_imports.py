"""The import graph of pdseg_cli: no cycles, and the pure metric functions stay leaves.

Every ``import`` and ``from ... import`` statement of every module counts, those inside functions
included: a function-local import that would close a cycle is a cycle too, only a hidden one.
Those under ``if TYPE_CHECKING:`` never run, and do not count. The implicit import of a parent
package (``pdseg_cli.metrics`` runs before ``pdseg_cli.metrics.fmeasure``) is not an edge: a
package's ``__init__`` that re-exports its modules would otherwise always form a cycle with them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pdseg_cli"
ROOT = "pdseg_cli"
METRICS = f"{ROOT}.metrics"
# the modules of pdseg_cli.metrics that touch files; the pure metric functions never import them
IO_MODULES = {f"{METRICS}.reading", f"{METRICS}.cache"}
PURE_THIRD_PARTY = {"numpy", "cv2"}  # what a pure metric module may import besides the stdlib


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _import_statements(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module named, names imported from it) of every import statement, inner ones included (not
    those under ``if TYPE_CHECKING:``, which never run).

    ``import a.b`` gives ``("a.b", [])``; ``from .c import d`` in package ``a`` gives ``("a.c", ["d"])``.
    """
    package = module if is_package else module.rpartition(".")[0]
    # an `if TYPE_CHECKING:` block never runs: its imports are for type checkers and form no cycle
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [alias.name for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """pdseg_cli module -> the pdseg_cli modules it imports (a package stands for its __init__).

    ``import a.b`` runs ``a.b``; ``from a import b`` runs the module ``a.b`` when there is one,
    else ``a`` (``b`` is then a name defined in ``a``).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for base, names in _import_statements(tree, name, path.name == "__init__.py"):
            if not base.startswith(ROOT):
                continue
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(submodules) < len(names) or not names:
                submodules.append(base)
            targets.update(submodules)
        targets.discard(name)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=sorted)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _pure_metric_modules() -> list[str]:
    return sorted(m for m in _modules() if m.startswith(f"{METRICS}.") and m not in IO_MODULES)


GRAPH = import_graph()


def test_the_graph_sees_every_import_statement() -> None:
    source = (
        "import pdseg_cli.metrics.stats as st\n"
        "from . import fmeasure\n"
        "def f():\n    from ..engine.evaluate import evaluate\n"
        "class C:\n    def m(self):\n        import numpy\n"
        "if TYPE_CHECKING:\n    from pdseg_cli.engine.predict import Predictor\n"
    )
    found = list(_import_statements(ast.parse(source), f"{METRICS}.image", False))
    assert found == [
        (f"{METRICS}.stats", []),
        (METRICS, ["fmeasure"]),
        (f"{ROOT}.engine.evaluate", ["evaluate"]),
        ("numpy", []),
    ]
    assert f"{METRICS}.fmeasure" in GRAPH[f"{METRICS}.image"]


def test_no_import_cycle_in_pdseg_cli() -> None:
    assert [sorted(c) for c in import_cycles(GRAPH)] == []


@pytest.mark.parametrize("module", _pure_metric_modules())
def test_pure_metric_modules_do_not_reach_files(module: str) -> None:
    reached = _reachable(GRAPH, module)
    assert not reached & IO_MODULES, sorted(reached & IO_MODULES)
    assert all(m.startswith(METRICS) for m in reached), sorted(reached)
    tree = ast.parse(_modules()[module].read_text())
    outside = {base.split(".")[0] for base, _ in _import_statements(tree, module, False)}
    outside.discard(ROOT)
    assert outside - PURE_THIRD_PARTY - set(sys.stdlib_module_names) == set()


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout's pdseg_cli."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


def test_every_module_imports() -> None:
    # one fresh interpreter per module would take minutes; one interpreter importing them all in
    # sorted order still catches a cycle that breaks at import time (a name read too early)
    done = _python(
        "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n", *_modules()
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_metrics_import_without_the_rest_of_pdseg_cli() -> None:
    code = (
        "import sys\nimport pdseg_cli.metrics.image, pdseg_cli.metrics.aggregate\n"
        "print(' '.join(m for m in sys.modules if m.startswith('pdseg_cli') and not m.startswith("
        "'pdseg_cli.metrics')))"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    # the package root, the errors that reading.py (re-exported by the package) raises, and the
    # stdlib-only router of decoder messages it reads files through
    leaves = {ROOT, f"{ROOT}.errors", f"{ROOT}.data", f"{ROOT}.data.native_messages"}
    assert set(done.stdout.split()) <= leaves


def test_the_data_layer_never_reaches_the_engine() -> None:
    """Layers import one way: the engine uses the data layer, never the reverse, so reading images
    and building training samples stay usable, and testable, without the model core."""
    data = [m for m in GRAPH if m.startswith(f"{ROOT}.data")]
    reached = {m: sorted(r for r in _reachable(GRAPH, m) if r.startswith(f"{ROOT}.engine")) for m in data}
    assert {m: r for m, r in reached.items() if r} == {}
