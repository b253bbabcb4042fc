"""The layout's rules: no import cycle between autoprune's modules, imports that flow one way
between the layers of docs/architecture.md, and a public API whose names all import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import autoprune

PACKAGE = Path(autoprune.__file__).parent

LAYERS = {
    "autoprune.trial": 1,
    "autoprune.search": 2,
    "autoprune.results": 3,
    "autoprune.bench": 4,
    "autoprune.cli": 5,
    "autoprune.__main__": 5,
}
"""Each layer may import from its own and lower ones; modules not named (config, data, models...)
are layer 0."""


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _type_only(tree: ast.AST) -> set[int]:
    """The nodes inside ``if TYPE_CHECKING:`` blocks (never imported at run time)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    return skipped


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every module's imports of other autoprune modules, function-level ones included."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skipped = _type_only(tree)
        found: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("autoprune")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                if base.startswith("autoprune"):
                    found |= {resolve(f"{base}.{a.name}") for a in node.names}
        found.discard(None)
        found.discard(name)
        graph[name] = {f for f in found if f is not None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    return max((n for prefix, n in LAYERS.items() if module == prefix or module.startswith(prefix + ".")), default=0)


def test_no_import_cycle() -> None:
    assert cycles(imports(module_names())) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def upward(graph: dict[str, set[str]]) -> list[str]:
    """The imports that climb a layer (the package's own ``__init__`` re-exports from every layer)."""
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if m != "autoprune" and layer(d) > layer(m))


def test_imports_flow_down_the_layers() -> None:
    assert upward(imports(module_names())) == []


def test_an_import_from_a_higher_layer_is_found() -> None:
    graph = {"autoprune.trial.space": {"autoprune.config", "autoprune.search.run"}, "autoprune.config": set()}
    assert upward(graph) == ["autoprune.trial.space -> autoprune.search.run"]


def test_every_public_name_imports() -> None:
    for name in autoprune.__all__:
        assert getattr(autoprune, name) is not None, name
    assert sorted(autoprune.__all__) == sorted(autoprune._HOMES)


def test_every_module_imports() -> None:
    for name in module_names():
        if name != "autoprune.__main__":
            importlib.import_module(name)
