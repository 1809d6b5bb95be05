"""No module or class of meshpilot defines one name twice as a function.

A merge of two branches that each added a method of one name leaves both in the class, and
Python keeps the later silently (ruff's F811 does not see methods): the earlier one's callers
then call the wrong function. This happened once (`Meshpilot._settled`); this test keeps it
from happening again. Property setters and `typing.overload` stubs are what legitimately
repeat a name."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "meshpilot"
_REPEATABLE = ("setter", "deleter", "overload")


def _repeatable(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        name = decorator.attr if isinstance(decorator, ast.Attribute) else getattr(
            decorator, "id", "")
        if name in _REPEATABLE:
            return True
    return False


def _twice(body: list[ast.stmt], where: str) -> list[str]:
    seen: dict[str, int] = {}
    found = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not _repeatable(node):
            if node.name in seen:
                found.append(f"{where}: {node.name} at lines {seen[node.name]} and {node.lineno}")
            seen[node.name] = node.lineno
        if isinstance(node, ast.ClassDef):
            found += _twice(node.body, f"{where}.{node.name}")
    return found


def test_no_function_or_method_is_defined_twice() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found += _twice(tree.body, str(path.relative_to(PACKAGE.parent)))
    assert found == []


def test_the_check_sees_a_repeated_method() -> None:
    tree = ast.parse("class A:\n    def f(self): ...\n    def f(self, x): ...\n")
    assert _twice(tree.body, "m") == ["m.A: f at lines 2 and 3"]
