"""Amphi's modules import each other without a cycle: calls go one way (docs/architecture.md).
Every import counts, also those inside functions and ``TYPE_CHECKING`` blocks: a cycle hidden
there is still two modules that each need the other. (listener <-> swarm in the load tester
and node <-> observer were such cycles.)"""

from __future__ import annotations

import ast
from pathlib import Path

import amphi

ROOT = Path(amphi.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("amphi", *p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # "from amphi.x import y": module amphi.x.y if it is one
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name and d != "amphi"}
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
    assert "amphi.loadtest.listener" in graph["amphi.loadtest.swarm"]  # the swarm runs listeners
    assert "amphi.control.listeners" in graph["amphi.node"]
    assert "amphi.obs.snapshot" in graph["amphi.obs.observer"]


def test_no_import_cycle_in_amphi() -> None:
    assert _cycle(_graph()) is None


def test_obs_is_a_leaf() -> None:
    """obs gets events and a snapshot from the root; it imports nothing of web, services or the root."""
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("amphi.obs"):
            assert not {d for d in deps if d.startswith(("amphi.web", "amphi.services", "amphi.node"))}, name


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
