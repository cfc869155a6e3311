"""The package's folders are its wings; imports point down only and never go round in a circle.

The layers themselves are import-linter contracts in pyproject.toml (run by CI); this test adds what a
layers contract cannot say: no module, inside a wing or across, is part of an import cycle.
"""

from __future__ import annotations

import grimp

WINGS = ("agentshards._base", "agentshards._core", "agentshards._replication", "agentshards._fleet",
         "agentshards._cli", "agentshards.testing", "agentshards.integrations")


def _cycle(graph: grimp.ImportGraph, modules: set[str]) -> list[str] | None:
    """A depth-first search for a back edge; returns one cycle as a path, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.find_modules_directly_imported_by(module) & modules):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("agentshards")
    modules = {m for m in graph.modules if m != "agentshards" and not m.endswith("__main__")}
    # A package's __init__ importing its own module is not a cycle worth reporting; leave packages out.
    modules = {m for m in modules if not graph.find_children(m)}
    assert _cycle(graph, modules) is None


def test_every_module_lives_in_a_wing() -> None:
    graph = grimp.build_graph("agentshards")
    loose = {m for m in graph.modules
             if m not in ("agentshards", "agentshards.__main__") and not m.startswith(WINGS)}
    assert loose == set(), "give each module a wing (see the layers in pyproject.toml)"


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = grimp.ImportGraph()
    for module in ("p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    assert _cycle(graph, {"p.a", "p.b", "p.c"}) is None
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycle(graph, {"p.a", "p.b", "p.c"}) == ["p.a", "p.b", "p.c", "p.a"]
