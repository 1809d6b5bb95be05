"""The import graph of meshpilot/, computed from the source with `ast`: no cycles, and every
arrow points down the layers docs/architecture.md draws.

Every import counts, including those inside functions and under `if TYPE_CHECKING:` (an import
moved into a function or a type-only block to dodge a cycle is still a cycle of the design).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "meshpilot"

# Which wings each wing may import (besides itself). Lowest first; see docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "ir": {"base"},
    "inputs": {"base", "ir"},
    "xds": {"base"},
    "ca": {"base"},
    "store": {"base"},
    "discovery": {"base", "ir", "ca", "store"},
    "translators": {"base", "ir", "xds", "ca"},
    "runtime": {"base", "ir", "inputs", "xds", "ca", "store", "discovery", "translators"},
    "local": {"base", "ir", "inputs", "xds", "ca", "store", "discovery", "translators",
              "runtime"},
    "cli": {"base", "ir", "inputs", "xds", "ca", "store", "discovery", "translators", "runtime",
            "local", "__init__"},
    "__init__": set(),
    "launch": {"cli", "base"},  # the `meshpilot` command: the allocator, then the CLI
    "__main__": {"launch"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _existing(name: str) -> str:
    """The longest prefix of a dotted name that is one of our modules."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_existing(a.name) for a in node.names if a.name.split(".")[0] == "meshpilot"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "meshpilot":
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else _existing(target))
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read() -> None:
    assert len(MODULES) > 40
    assert "meshpilot.ir.model" in GRAPH["meshpilot.translators"]


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_cycle_detection_finds_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_arrow_points_down() -> None:
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items()
                    for target in targets
                    if wing(target) != wing(module) and wing(target) not in ALLOWED[wing(module)])
    assert upward == []


def test_every_wing_has_a_rule() -> None:
    assert {wing(m) for m in MODULES} <= set(ALLOWED)
