"""Errors as values with a position: the file, line and column, the document and the field path.

Every layer that rejects user input raises `PolicyError` carrying one or more `PolicyIssue`s; the
edges (CLI, watcher, admin) print them. Messages never include secret material.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a policy file; line and column are 1-based, as editors show them."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in the policy, printed as `file:line:col: Kind name: field.path: message`."""

    message: str
    position: Position | None = None
    kind: str | None = None
    name: str | None = None
    field: str = ""

    def __str__(self) -> str:
        parts = []
        if self.position is not None:
            parts.append(str(self.position))
        if self.kind:
            parts.append(f"{self.kind} {self.name}" if self.name else self.kind)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)


class PolicyError(Exception):
    """The policy cannot be used as it is; `issues` lists every problem found, in file order."""

    def __init__(self, issues: list[PolicyIssue] | tuple[PolicyIssue, ...]):
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
