"""One Istio document while the compile step works on it: its parse, its object and the
model parts it produces, with its own way of reporting. Shared by `compile.py` and
`security.py`, below both (so neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshpilot.base.errors import PolicyIssue
from meshpilot.inputs.context import DocumentContext, ModelPart, ParsedDocument
from meshpilot.inputs.istio import objects as o
from meshpilot.inputs.yamlsource import FieldPath, format_path


@dataclass(slots=True)
class Doc:
    parsed: ParsedDocument
    item: o.IstioDocument
    parts: list[ModelPart] = field(default_factory=list)

    @property
    def ctx(self) -> DocumentContext:
        return self.parsed.context

    def error(self, path: FieldPath, message: str) -> None:
        self.ctx.report(path, message, at_value=True)

    def warn(self, path: FieldPath, message: str, *, once: bool = False) -> None:
        """A warning at `path`; `once`: not again if this very warning was given (a policy
        compiled once per port and subset)."""
        ctx = self.ctx
        issue = PolicyIssue(message, ctx.document.position_of(path), ctx.kind, ctx.name,
                            format_path(path))
        if not once or issue not in ctx.load.warnings:
            ctx.load.warnings.append(issue)
