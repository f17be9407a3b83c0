"""The package's layers, read from the source: a lower layer never imports a higher one, no refusal_lab import
hides inside a function, and neither the module graph nor the package graph has a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# bottom to top; packages on one line share a layer and may import each other (without a cycle)
LAYERS = (
    ("core",),
    ("data", "models"),
    ("fitting", "interventions"),
    ("methods", "selection", "search", "analysis", "evaluation"),
    ("pipeline",),
    ("cli",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The refusal_lab modules an import statement names (``from pkg import name`` counts ``pkg.name`` where
    that is a module, else ``pkg``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """``({module: refusal_lab modules it imports at module level}, [function-level refusal_lab imports])``."""
    files = {module_name(p, root): p for p in (root / "refusal_lab").rglob("*.py")}
    graph, hidden = {}, []
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        graph[module] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in imported(node, module, path.name == "__init__.py", set(files))
                       if t == "refusal_lab" or t.startswith("refusal_lab.")]
            if id(node) in nested and targets:
                hidden.append(f"{module}:{node.lineno} {ast.unparse(node)}")
            graph[module].update(t for t in targets if t != module)
    return graph, hidden


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        own = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if own is None or theirs is None:  # the top-level package (its version) may be read by anyone
                continue
            if own not in RANK or theirs not in RANK:
                found.append(f"{module} → {target}: package not in LAYERS")
            elif RANK[theirs] > RANK[own]:
                found.append(f"{module} (layer {RANK[own]}) imports {target} (layer {RANK[theirs]})")
    return sorted(found)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        own = layer_of(module)
        if own is not None:
            packages.setdefault(own, set()).update(layer_of(t) for t in targets if layer_of(t) not in (own, None))
    return packages


@pytest.fixture(scope="module")
def graph_and_hidden():
    return import_graph(SRC)


def test_every_package_has_a_layer(graph_and_hidden):
    graph, _ = graph_and_hidden
    packages = {layer_of(m) for m in graph} - {None}
    assert packages <= set(RANK), f"packages without a layer: {sorted(packages - set(RANK))}"


def test_no_lower_layer_imports_a_higher_one(graph_and_hidden):
    assert violations(graph_and_hidden[0]) == []


def test_no_refusal_lab_import_hides_in_a_function(graph_and_hidden):
    assert graph_and_hidden[1] == []


def test_no_import_cycle_between_modules_or_packages(graph_and_hidden):
    graph, _ = graph_and_hidden
    assert cycle(graph) is None
    assert cycle(package_graph(graph)) is None


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "refusal_lab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_a_deliberate_violation(tmp_path):
    """A core module importing the pipeline, an import inside a function and a two-module cycle are each found."""
    root = write_package(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/low.py": "from refusal_lab.pipeline.high import job\n",
        "pipeline/__init__.py": "",
        "pipeline/high.py": "from refusal_lab.core import low\n\ndef job():\n    from refusal_lab.cli import app\n",
        "cli/__init__.py": "",
        "cli/app.py": "",
    })
    graph, hidden = import_graph(root)
    assert violations(graph) == ["refusal_lab.core.low (layer 0) imports refusal_lab.pipeline.high (layer 4)",
                                 "refusal_lab.pipeline.high (layer 4) imports refusal_lab.cli.app (layer 5)"]
    assert hidden == ["refusal_lab.pipeline.high:4 from refusal_lab.cli import app"]
    assert cycle(graph) == ["refusal_lab.core.low", "refusal_lab.pipeline.high", "refusal_lab.core.low"]
    assert cycle(package_graph(graph)) == ["core", "pipeline", "core"]


def test_no_function_over_80_lines_and_no_module_over_400():
    """The size rule (docs/architecture.md): every def ≤ 80 lines (end_lineno − lineno + 1), every module ≤ 400."""
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(SRC.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80]
    big = [f"{path.relative_to(SRC)} ({n} lines)" for path in sorted(SRC.rglob("*.py"))
           if (n := len(path.read_text().splitlines())) > 400]
    assert long == [] and big == []
