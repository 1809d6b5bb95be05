"""The last step of every load: the checks across documents, then the model or the error."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import TypeVar

from meshpilot.base.errors import PolicyError, PolicyIssue
from meshpilot.base.types import ADS_ORDER
from meshpilot.inputs.context import (
    FormatPart,
    LoadContext,
    ModelPart,
    ParsedDocument,
    PendingPart,
)
from meshpilot.inputs.documents import FORMATS, compile_pending
from meshpilot.inputs.formats import FormatRegistry
from meshpilot.inputs.native import meshpolicy
from meshpilot.inputs.references import validate_references
from meshpilot.ir.model import (
    Gateway,
    MeshPolicy,
    Model,
    ObjectStatus,
    RawResource,
    RolloutSettings,
    Route,
    Service,
)


def finish(load: LoadContext, parsed: list[ParsedDocument], files: tuple[str, ...]) -> Model:
    """The model of the parsed documents; `PolicyError` with every issue, in file order, if
    any document or any check across documents had one."""
    parsed = compile_pending(parsed, load)
    # References are checked even when documents had issues: every problem is reported in one
    # pass, and a document with issues gave no parts, so its errors are not echoed here.
    validate_references(parsed, load)
    compiled, statuses = compile_formats(parsed, load)
    if load.issues:
        raise PolicyError(sorted(load.issues, key=issue_order))
    return build_model((*(part for document in parsed for part in document.parts), *compiled),
                       files, statuses, load.warnings)


def compile_formats(parsed: Sequence[ParsedDocument], load: LoadContext,
                    formats: FormatRegistry = FORMATS,
                    ) -> tuple[list[ModelPart], list[ObjectStatus]]:
    """What the formats' compile steps make of every parsed document (`formats.py`)."""
    parts: list[ModelPart] = []
    statuses: list[ObjectStatus] = []
    for step in formats.compilers():
        made, said = step(parsed, load)
        parts.extend(made)
        statuses.extend(said)
    return parts, statuses


def compile_formats_edit(parsed: Sequence[ParsedDocument], load: LoadContext,
                         removed: Sequence[ParsedDocument], added: Sequence[ParsedDocument],
                         kept: dict[int, object], formats: FormatRegistry = FORMATS,
                         ) -> tuple[list[ModelPart], list[ObjectStatus], dict[int, object]]:
    """`compile_formats` for an incremental load: each step that can (`compile_edit`) is
    given the edit and what it kept last time (`kept`, by step); what each keeps now."""
    parts: list[ModelPart] = []
    statuses: list[ObjectStatus] = []
    keeping: dict[int, object] = {}
    for step, edit_step in formats.edit_compilers():
        if edit_step is None:
            made, said = step(parsed, load)
        else:
            made, said, state = edit_step(parsed, load, removed, added, kept.get(id(step)))
            if state is not None:
                keeping[id(step)] = state
        parts.extend(made)
        statuses.extend(said)
    return parts, statuses, keeping


def build_model(parts: Iterable[ModelPart], files: tuple[str, ...],
                statuses: Iterable[ObjectStatus] = (),
                warnings: Iterable[PolicyIssue] = ()) -> Model:
    """The model of a valid policy, in a deterministic order (translators rely on it)."""
    raw: list[RawResource] = []
    services: list[Service] = []
    gateways: list[Gateway] = []
    routes: list[Route] = []
    rollout: RolloutSettings | None = None  # one at most (references.py)
    policies: list[MeshPolicy] = []
    for part in parts:
        kind = type(part)  # the usual classes first, by type (thousands of parts)
        if kind is Route:
            routes.append(part)
        elif kind is Service:
            services.append(part)
        elif isinstance(part, FormatPart):
            continue  # a compile step's input, already compiled
        elif isinstance(part, MeshPolicy):
            policies.append(part)
        elif isinstance(part, RawResource):
            raw.append(part)
        elif isinstance(part, Service):
            services.append(part)
        elif isinstance(part, Gateway):
            gateways.append(part)
        elif isinstance(part, RolloutSettings):
            rollout = part
        elif not isinstance(part, PendingPart):
            routes.append(part)
    # Namespace-wide and mesh-wide policy, taken into each sidecar it applies to.
    services = meshpolicy.apply(services, policies)
    raw.sort(key=lambda resource: (_ads_rank(resource.type_url), resource.name))
    return Model(raw=tuple(raw), services=_by_name(services), gateways=_by_name(gateways),
                 routes=_by_name(routes), files=files,
                 statuses=tuple(sorted(statuses, key=status_order)),
                 warnings=tuple(sorted(warnings, key=issue_order)), rollout=rollout)


_Named = TypeVar("_Named", Service, Gateway, Route)


# Sort keys made in C (a policy of 1,000 routes sorts thousands of parts and statuses).
_name = attrgetter("name")
status_order = attrgetter("kind", "name", "parent")  # and modelpatch.py's


def _by_name(parts: list[_Named]) -> tuple[_Named, ...]:
    return tuple(sorted(parts, key=_name))


def _ads_rank(type_url: str) -> int:
    return ADS_ORDER.index(type_url) if type_url in ADS_ORDER else len(ADS_ORDER)


def issue_order(issue: PolicyIssue) -> tuple[str, int, int]:
    """Issues in file order (modelpatch.py keeps a patched model's warnings in it too)."""
    position = issue.position
    return ("", 0, 0) if position is None else (position.file, position.line, position.column)
