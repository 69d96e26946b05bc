"""The import graph flows one way and has no cycles (issue 13, part 2). Every module's imports are read with
``ast`` — top-level and function-level ``import``/``from … import`` alike, plus the module names a package's
``__init__`` exports lazily as strings — and checked against the layers:

* ``adagrpo.datamodules`` imports neither ``adagrpo.lightning_modules`` nor ``adagrpo.callbacks``;
* ``adagrpo.lightning_modules`` does not import ``adagrpo.callbacks``;
* none of the three imports the command layer (``adagrpo.cli``, ``adagrpo.commands``, ...): from ``adagrpo``'s own
  modules they use only the shared :mod:`adagrpo.errors` and :mod:`adagrpo.progress`;
* no cycle anywhere among the project's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: installed package → folder in the repository (pyproject's [tool.setuptools.package-dir])
PACKAGES = {"adagrpo": "adagrpo", "adagrpo.datamodules": "datamodules",
            "adagrpo.lightning_modules": "lightning_modules", "adagrpo.callbacks": "callbacks"}
SUBPACKAGES = ("adagrpo.datamodules", "adagrpo.lightning_modules", "adagrpo.callbacks")
#: package → the sibling packages it must not import
FORBIDDEN = {"adagrpo.datamodules": ("adagrpo.lightning_modules", "adagrpo.callbacks"),
             "adagrpo.lightning_modules": ("adagrpo.callbacks",)}
#: the modules of the top-level package that the three packages may import
SHARED = {"adagrpo.errors", "adagrpo.progress"}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        files = sorted((REPO / folder).glob("*.py"))
        assert files, f"no modules in {folder}/"
        for f in files:
            modules[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a ``from pkg import mod`` counts as importing ``pkg.mod``)."""
    is_package = path.stem == "__init__"
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)  # lazy exports: {"Gate": "adagrpo.lightning_modules.gating", ...}
    edges = set()
    for target in found:  # `import adagrpo.x.y` also names adagrpo.x.y's module when y is an attribute
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and target != "adagrpo":
            edges.add(target)
    return edges


def package_of(module: str) -> str:
    for package in SUBPACKAGES:
        if module == package or module.startswith(package + "."):
            return package
    return "adagrpo"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        own = package_of(module)
        for target in sorted(targets):
            if target.startswith(FORBIDDEN.get(own, ("\0",))):
                bad.append(f"{module} imports {target}")
            elif own != "adagrpo" and package_of(target) == "adagrpo" and target not in SHARED:
                bad.append(f"{module} imports the command layer's {target}")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def test_the_graph_is_read(graph):
    # the parser sees the imports that are known to exist (a silent parser would pass the checks below)
    assert "adagrpo.lightning_modules.gating" in graph["adagrpo.lightning_modules.grpo"]
    assert "adagrpo.errors" in graph["adagrpo.datamodules.readers"]
    assert "adagrpo.lightning_modules.bias_report" in graph["adagrpo.lightning_modules.reward"]  # function-level
    assert "adagrpo.lightning_modules.gating" in graph["adagrpo.callbacks"]  # lazy export string


def test_packages_import_only_downwards(graph):
    assert layer_violations(graph) == []


def test_no_import_cycles(graph):
    assert find_cycle(graph) is None


def test_the_checks_catch_violations():
    graph = {"adagrpo.datamodules.a": {"adagrpo.lightning_modules.b"}, "adagrpo.lightning_modules.b": {
        "adagrpo.callbacks.c", "adagrpo.commands"}, "adagrpo.callbacks.c": {"adagrpo.lightning_modules.b"},
        "adagrpo.commands": set()}
    assert layer_violations(graph) == [
        "adagrpo.datamodules.a imports adagrpo.lightning_modules.b",
        "adagrpo.lightning_modules.b imports adagrpo.callbacks.c",
        "adagrpo.lightning_modules.b imports the command layer's adagrpo.commands",
    ]
    assert find_cycle(graph) == ["adagrpo.callbacks.c", "adagrpo.lightning_modules.b", "adagrpo.callbacks.c"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
