"""The package's import graph: layers import downwards only, and nothing imports in a circle.

``LAYERS`` is the order, written once (docs/architecture.md draws it): bottom first, each
entry a package or module of the package. A module belongs to the longest entry that names it
or a package above it, may import its own entry and the layers below, and nothing of a higher
layer nor of another entry of its own layer (entries of one layer are independent).

Every module is parsed with ``ast``; every ``adamml.*`` import counts, the ones inside
functions too (an import hidden in a function is still a dependency), and each of those says
why it is there in a comment.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import adamml

PACKAGE = Path(adamml.__file__).parent

ROOT = "adamml"  # the package's own __init__: its entry names that module alone

LAYERS: list[tuple[str, ...]] = [
    ("adamml.errors", "adamml.version"),
    ("adamml.config", "adamml.layouts", "adamml.media", "adamml.results", "adamml.runtime",
     "adamml.export.format"),
    ("adamml.data.sampling",),
    ("adamml.modalities",),
    ("adamml.data", "adamml.models"),
    ("adamml.config_files",),
    ("adamml.evaluation",),
    ("adamml.training", "adamml.inference", "adamml.runners"),
    ("adamml.export",),
    ("adamml.api",),
    ("adamml.scale", "adamml.demo"),
    (ROOT,),
    ("adamml.commands",),
    ("adamml.cli",),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _import_graph() -> dict[str, set[str]]:
    files = _modules()
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


def _entry(module: str, layers: list[tuple[str, ...]]) -> tuple[int, str] | None:
    """(layer index, entry) of ``module``: the longest entry naming it or a package above it."""
    found = [
        (len(entry), i, entry)
        for i, layer in enumerate(layers)
        for entry in layer
        if module == entry or (entry != ROOT and module.startswith(entry + "."))
    ]
    return max(found)[1:] if found else None


def _upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, ...]]) -> list[str]:
    """Every import of ``graph`` into a higher layer or into another entry of the same layer."""
    offending = []
    for module, targets in sorted(graph.items()):
        layer, entry = _entry(module, layers)
        for target in sorted(targets):
            to_layer, to_entry = _entry(target, layers)
            if to_layer > layer or (to_layer == layer and to_entry != entry):
                offending.append(f"{module} ({entry}) -> {target} ({to_entry})")
    return offending


def test_every_module_has_a_layer():
    assert [m for m in sorted(_modules()) if _entry(m, LAYERS) is None] == []


def test_the_layer_check_finds_an_upward_import_and_one_between_neighbours():
    layers = [("adamml.low",), ("adamml.a", "adamml.b"), ("adamml.top",)]
    graph = {"adamml.low.x": {"adamml.a.y"}, "adamml.a.y": {"adamml.b"}, "adamml.b": {"adamml.low.x"},
             "adamml.top": {"adamml.a.y", "adamml.low.x"}, "adamml.a.z": {"adamml.a.y"}}
    assert _upward_imports(graph, layers) == [
        "adamml.a.y (adamml.a) -> adamml.b (adamml.b)",
        "adamml.low.x (adamml.low) -> adamml.a.y (adamml.a)",
    ]


def test_every_import_goes_down_the_layers():
    assert _upward_imports(_import_graph(), LAYERS) == []


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return out


def test_every_import_inside_a_function_says_why():
    """On its line, or in a comment just above the group of imports it opens or belongs to."""
    silent = []
    for name, path in sorted(_modules().items()):
        lines = path.read_text().splitlines()
        nodes = sorted(_function_imports(ast.parse("\n".join(lines), str(path))), key=lambda n: n.lineno)
        group_said, previous_end = False, -1
        for node in nodes:
            first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
            if first != previous_end + 1:  # a new group: is there a comment above it?
                group_said = first > 0 and lines[first - 1].strip().startswith("#")
            previous_end = last
            if not (group_said or any("#" in lines[i] for i in range(first, last + 1))):
                silent.append(f"{name}:{node.lineno}: {lines[first].strip()}")
    assert silent == [], "imports inside functions without a comment saying why:\n" + "\n".join(silent)


def test_help_imports_no_sub_command_and_a_command_only_its_own():
    code = (
        "import sys, contextlib, io\n"
        "from adamml.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(sys.argv[1:])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('adamml.commands')))\n"
    )
    def loaded(*argv: str) -> str:
        return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout.strip()

    assert loaded("--help") == "[]"
    assert loaded("synth", "--help") == "['adamml.commands', 'adamml.commands.synth']"
