"""The load tester's modules import each other without a cycle (listener <-> swarm was one)."""

from __future__ import annotations

import ast
from pathlib import Path

import amphi.loadtest

PACKAGE = "amphi.loadtest"


def _graph() -> dict[str, set[str]]:
    root = Path(amphi.loadtest.__file__).parent
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((root / f"{name}.py").read_text())
        deps: set[str] = set()
        for node in ast.walk(tree):  # every import, also inside functions and TYPE_CHECKING blocks
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == PACKAGE:
                    deps |= {a.name for a in node.names if a.name in modules}
                elif node.module.startswith(PACKAGE + "."):
                    deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith(PACKAGE + ".")}
        graph[name] = deps & modules - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_sees_the_imports() -> None:
    graph = _graph()
    assert "listener" in graph["swarm"]  # the swarm runs listeners
    assert "config" in graph["listener"]


def test_no_import_cycle_in_the_load_tester() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
