"""The package's import graph: layers import downwards only, and nothing imports in a circle.

Every module is parsed with ``ast``; every ``adamml.*`` import counts, the ones inside
functions too (an import hidden in a function is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import adamml

PACKAGE = Path(adamml.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from adamml.x import y` imports the module adamml.x.y when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # adamml.x.y.attr -> adamml.x.y
                    target = target.rpartition(".")[0]
                if target.startswith("adamml") and target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_sees_imports_inside_functions():
    graph = _import_graph()
    # The plots (matplotlib) are imported inside the function that draws them.
    assert "adamml.evaluation.plots" in graph["adamml.evaluation.evaluate"]
    assert "adamml.runtime.checkpoint" in graph["adamml.models.build"]


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_in_a_circle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_evaluation_and_inference_do_not_import_training():
    graph = _import_graph()
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith(("adamml.evaluation", "adamml.inference"))
        for target in targets
        if target.startswith("adamml.training")
    )
    assert offending == []


def test_runtime_plumbing_depends_on_no_other_layer():
    """Checkpoints, the distributed set-up and the run layout serve every layer, so they may
    use only the package's error base class."""
    graph = _import_graph()
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.startswith("adamml.runtime")
        for target in targets
        if not target.startswith("adamml.runtime") and target != "adamml.errors"
    )
    assert offending == []
