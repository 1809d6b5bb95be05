"""A loaded policy, whatever formats it was written in, written in the native language
(`meshpilot convert --to native`).

It works from the model, so every input format (Gateway API, Istio, native itself) converts
through this one seam: `native/writer.py` writes each Service, Gateway and Route; this module
gives them native names, prints them with the place each came from, and proves the result:
the written text is loaded again and each element compared with the model's. Anything the
native language could not say (the writer's `Unsaid`s, and any difference the comparison
finds) is reported with the source's file:line, and `complete` says whether there was none.

Names: Gateway API's and Istio's compiled names hold `/` and `:` (`shop/edge`, `shop/web:80`),
which native names cannot, so those are renamed (`shop.edge`, `shop.web-80`) everywhere they
are used; `names` maps each old name to the new one (a Gateway's Envoys then say
`--node-cluster shop.edge`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshpilot.base import tlsfiles
from meshpilot.base.errors import PolicyError, Position
from meshpilot.base.privatefiles import write_private
from meshpilot.inputs.loader import load_policy_text
from meshpilot.inputs.native.writer import WRITERS, Unsaid, Written
from meshpilot.ir import model as ir
from meshpilot.ir.model import Model, Origin

_NATIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
CONVERTED_FILE = "converted.yaml"


@dataclass(frozen=True, slots=True)
class Conversion:
    text: str  # the native documents, YAML, one per Service, Gateway and Route
    unsaid: tuple[Unsaid, ...]  # what the text does not say that the model does
    names: dict[str, str]  # model name -> native name, for the names that had to change

    @property
    def complete(self) -> bool:
        return not self.unsaid


def native_names(model: Model) -> dict[str, str]:
    """A native name for every Service, Gateway and Route name the native language cannot
    spell: `/` becomes `.`, anything else not allowed `-` (`shop/edge/80/*` is
    `shop.edge.80.-`: a Route's name orders its virtual host among the others, and `-` sorts
    where `*` does, so the route configuration keeps its order); a name taken already gets
    `-2`..."""
    taken = {element.name for element in (*model.services, *model.gateways, *model.routes)
             if _NATIVE_NAME.match(element.name)}
    names: dict[str, str] = {}
    for element in (*model.services, *model.gateways, *model.routes):
        if element.name in names or _NATIVE_NAME.match(element.name):
            continue
        base = re.sub(r"[^A-Za-z0-9._-]", "-", element.name.replace("/", "."))
        base = re.sub(r"^[^A-Za-z0-9]+", "", base)[:240] or "x"
        candidate, number = base, 1
        while candidate in taken:
            number += 1
            candidate = f"{base}-{number}"
        taken.add(candidate)
        names[element.name] = candidate
    return names


# The fields that hold a Service's, Gateway's or Route's name (and only those are renamed:
# a header value that happens to read `shop/edge` stays as it is).
NAME_FIELDS: frozenset[tuple[type, str]] = frozenset({
    (ir.Service, "name"), (ir.Service, "failover"), (ir.Gateway, "name"),
    (ir.GatewayListener, "service"), (ir.Route, "name"), (ir.Route, "gateway"),
    (ir.Route, "service"), (ir.Backend, "service"), (ir.Mirror, "service"),
    (ir.Mirror, "candidates"), (ir.Call, "service"), (ir.Call, "route"),
    (ir.Tracing, "collector"), (ir.ExtAuthz, "service"), (ir.Jwks, "service"),
    (ir.AuthzRule, "principals"), (ir.RateLimit, "shared"),
})
# The fields that hold a file's path (a certificate written under another name by `-o`).
PATH_FIELDS: frozenset[tuple[type, str]] = frozenset({
    (ir.TlsCertificate, "cert_path"), (ir.TlsCertificate, "key_path"),
    (ir.UpstreamTls, "ca_path"),
})


def _mapped(value: Any, text: Callable[[str], str], positions: bool,
            fields: frozenset[tuple[type, str]], mapping: bool = False) -> Any:
    """`value` with the strings of `fields` passed through `text` (and, `positions` False,
    every Position dropped), dataclasses rebuilt; protobuf messages and bytes kept as they
    are. `mapping`: `value` is (inside) one of those fields."""
    if isinstance(value, str):
        return text(value) if mapping else value
    if isinstance(value, tuple):
        return tuple(_mapped(item, text, positions, fields, mapping) for item in value)
    if isinstance(value, Position):
        return value if positions else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _mapped(getattr(value, f.name), text, positions, fields,
                                   (type(value), f.name) in fields)
                   for f in dataclasses.fields(value)
                   if f.init and f.compare and not f.name.startswith("_")}
        return dataclasses.replace(value, **changes)
    return value


def renamed(model: Model, names: dict[str, str]) -> Model:
    """The model with its Services, Gateways and Routes under their native names, wherever a
    name is used (backends, mirrors, failover, a Route's gateway, a collector ...)."""
    if not names:
        return model

    def text(value: str) -> str:
        return names.get(value, value)
    services = tuple(sorted((_mapped(s, text, True, NAME_FIELDS) for s in model.services),
                            key=lambda s: s.name))
    gateways = tuple(sorted((_mapped(g, text, True, NAME_FIELDS) for g in model.gateways),
                            key=lambda g: g.name))
    routes = tuple(sorted((_mapped(r, text, True, NAME_FIELDS) for r in model.routes),
                          key=lambda r: r.name))
    return dataclasses.replace(model, services=services, gateways=gateways, routes=routes)


def only_gateway(model: Model, gateway: str) -> Model:
    """The part of `model` one Gateway's Envoys are served: that Gateway and its Routes, with
    every Service and every Route attached to a Service (the mesh). For a folder whose
    Gateways share a port: native Gateways are checked against each other (one machine could
    run them all), Gateway API ones are each their own view. KeyError: no such Gateway."""
    if model.gateway(gateway) is None:
        raise KeyError(gateway)
    return dataclasses.replace(
        model, gateways=tuple(g for g in model.gateways if g.name == gateway),
        routes=tuple(r for r in model.routes if r.gateway in (None, gateway)))


class _Files:
    """Writes the PEM a model holds outside files (Secrets, ConfigMaps) under `output`, each
    once, under a name made from where it came from (`secret-shop-edge-cert.crt`); keys
    readable by their owner only."""

    SUFFIXES = {"cert": ".crt", "key": ".key", "ca": ".ca.crt"}

    def __init__(self, output: Path) -> None:
        self.output = output
        self.written: dict[tuple[str, bytes], str] = {}
        self.sources: dict[str, str] = {}  # a file written -> what the source called it

    def __call__(self, what: str, source: str, data: bytes, private: bool) -> str:
        known = self.written.get((what, data))
        if known is not None:
            return known
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-.") or what
        name = f"certs/{stem}{self.SUFFIXES[what]}"
        taken = set(self.written.values())
        number = 1
        while name in taken:
            number += 1
            name = f"certs/{stem}-{number}{self.SUFFIXES[what]}"
        path = self.output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if private:
            write_private(path, data)
        else:
            path.write_bytes(data)
        self.written[(what, data)] = name
        self.sources[name] = source
        return name


def convert(model: Model, folder: Path | None = None,
            allowed_files: Iterable[Path] = (), output: Path | None = None) -> Conversion:
    """`model` in the native language; `folder` (and `allowed_files`): where the original was
    read, against which relative file paths (certificates) are read when the text is checked.
    `output`: the folder the text will be written to (by the caller, as `policy.yaml`): PEM
    held in Secrets and ConfigMaps is written there too, as files the text names."""
    files = _Files(output) if output is not None else None
    flat, shared = one_table(model)
    names = native_names(flat)
    # Said once per listener, at its source; the rest is written (and checked) as one table.
    unsaid = [Unsaid(origin, f"Gateway {names.get(gateway, gateway)}: listeners[{index}]",
                     SHARED_PORT) for gateway, index, origin in shared]
    native = renamed(flat, names)
    # A Gateway none of whose listeners is served (each refused, or of another class's
    # Gateway) gives its Envoys nothing; a native Gateway needs a listener, so it is left
    # out, which gives them the same nothing, and said in the text.
    idle = {g.name for g in native.gateways if not g.listeners}
    native = dataclasses.replace(native, gateways=tuple(g for g in native.gateways
                                                        if g.name not in idle))
    written: list[Written] = []
    for kind, elements in (("Service", native.services), ("Gateway", native.gateways),
                           ("Route", native.routes)):
        written.extend(WRITERS[kind](element, files) for element in elements)
    unsaid.extend(u for w in written for u in w.unsaid)
    for raw in model.raw:
        unsaid.append(Unsaid(raw.origin, f"EnvoyResources {raw.document}: {raw.name}",
                             "raw Envoy resources are not converted; copy the EnvoyResources "
                             "document as it is"))
    if model.rollout is not None:
        unsaid.append(Unsaid(model.rollout.origin, f"Rollout {model.rollout.name}",
                             "the Rollout document is not converted; copy it as it is"))
    text = _text(written, names) + "".join(
        f"# Gateway {name} serves no listener, so it is not written (its Envoys get nothing "
        "either way)\n" for name in sorted(idle))
    if output is not None:  # relative paths are the output's, and files are read there
        folder, allowed_files = output, (*([folder] if folder else []), *allowed_files)
    unsaid.extend(_check(text, native, written, folder, allowed_files,
                         files.sources if files is not None else {}))
    return Conversion(text, tuple(unsaid), names)


# What is said of each listener whose route tables are picked by SNI (`one_table`).
SHARED_PORT = ("the per-hostname route tables of HTTPS listeners sharing the port (421 for "
               "misdirected requests) have no native equivalent: written as one https listener "
               "with every listener's certificates and its Routes as one table")


def one_table(model: Model) -> tuple[Model, list[tuple[str, int, Origin | None]]]:
    """What the native language can say of a model whose https listeners pick a route table
    by SNI (`GatewayListener.tls_hosts`: Gateway API HTTPS listeners sharing a port, GEP-3567),
    and which listeners those were (Gateway name, index, origin). A native listener owns its
    port, so it is one listener with every listener's certificates (Envoy picks one by SNI)
    and one route table: the Routes of each TLS host's table together, without the Routes
    made only for those tables (the 421s for misdirected requests, the 404 guards). On the
    input format's names: those Routes are known by them."""
    shared: list[tuple[str, int, Origin | None]] = []
    gateways = []
    for gateway in model.gateways:
        shared.extend((gateway.name, index, listener.origin)
                      for index, listener in enumerate(gateway.listeners) if listener.tls_hosts)
        listeners = tuple(dataclasses.replace(listener, tls_hosts=()) if listener.tls_hosts
                          else listener for listener in gateway.listeners)
        gateways.append(gateway if listeners == gateway.listeners
                        else dataclasses.replace(gateway, listeners=listeners))
    if not shared:
        return model, shared
    routes = tuple(dataclasses.replace(route, tls_host=None) if route.tls_host else route
                   for route in model.routes if not ir.only_for_tls_host(route))
    return dataclasses.replace(model, gateways=tuple(gateways), routes=routes), shared


def _text(written: list[Written], names: dict[str, str]) -> str:
    old = {new: old for old, new in names.items()}
    parts = []
    for document in written:
        source = _where(document.origin)
        comment = f"# {document.kind} {document.name}"
        if document.name in old:
            comment += f" (was {old[document.name]})"
        comment += f", from {source}" if source else ", made by the input format's compile step"
        rules = _rule_sources(document)
        if rules:
            comment += f"\n# its rules, in order, from {rules}"
        parts.append(comment + "\n" + yaml.safe_dump(document.body, sort_keys=False,
                                                     allow_unicode=True, width=100))
    return "---\n".join(parts)


def _rule_sources(document: Written) -> str:
    """Where a compiled Route's rules were written, when that is not the Route's own document
    (a Gateway API Route gathers the rules of every HTTPRoute on a listener's hostname)."""
    own = document.origin.position.file if document.origin is not None else None
    places = [_where(origin) for origin in document.rule_origins]
    if not places or all(p.split(":")[0] == own for p in places if p):
        return ""
    return ", ".join(p or "(made)" for p in places)


def _where(origin: Origin | None) -> str:
    if origin is None:
        return ""
    return f"{origin.position.file}:{origin.position.line}"


def _check(text: str, native: Model, written: list[Written], folder: Path | None,
           allowed_files: Iterable[Path], sources: dict[str, str]) -> list[Unsaid]:
    """Load `text` and compare each element with the (renamed) model's: what differs, for the
    elements whose writer reported nothing (those already say what is missing). `sources`:
    the files written for PEM the source held elsewhere, and what the source called it (the
    same value, under another path)."""
    try:
        if folder is not None:
            with tlsfiles.paths_relative_to(folder, allowed_files):
                loaded = load_policy_text(text, CONVERTED_FILE)
        else:
            loaded = load_policy_text(text, CONVERTED_FILE)
    except PolicyError as error:
        origins = {(w.kind, w.name): w.origin for w in written}
        return [Unsaid(origins.get((issue.kind or "", issue.name or "")),
                       f"{issue.kind} {issue.name}" if issue.kind else CONVERTED_FILE,
                       f"the native text is refused: {issue.field + ': ' if issue.field else ''}"
                       f"{issue.message}")
                for issue in error.issues]
    problems = []
    reported = {(w.kind, w.name) for w in written if w.unsaid}
    for kind, originals, again in (("Service", native.services, loaded.services),
                                   ("Gateway", native.gateways, loaded.gateways),
                                   ("Route", native.routes, loaded.routes)):
        found = {element.name: element for element in again}
        for element in originals:
            if (kind, element.name) in reported:
                continue
            other = found.get(element.name)
            where = _difference(_comparable(element), _comparable(other, sources), "")
            if where is not None:
                problems.append(Unsaid(element.origin, f"{kind} {element.name}"
                                       + (f": {where[0]}" if where[0] else ""),
                                       f"the native text says {where[2]} where the source says "
                                       f"{where[1]}"))
    return problems


def _comparable(value: Any, paths: dict[str, str] | None = None) -> Any:
    """`value` without positions (and with each path of `paths` as the source named it)."""
    if value is None:
        return None
    return _mapped(value, lambda text: (paths or {}).get(text, text), False, PATH_FIELDS)


def _difference(one: Any, two: Any, path: str) -> tuple[str, str, str] | None:
    """(field path, one's value, two's value) of the first difference, or None."""
    if one == two:
        return None
    if (dataclasses.is_dataclass(one) and type(one) is type(two)
            and not isinstance(one, type)):
        for f in dataclasses.fields(one):
            if not f.compare:
                continue
            found = _difference(getattr(one, f.name), getattr(two, f.name),
                                f"{path}.{f.name}" if path else f.name)
            if found is not None:
                return found
    if isinstance(one, tuple) and isinstance(two, tuple) and len(one) == len(two):
        for index, (a, b) in enumerate(zip(one, two, strict=True)):
            found = _difference(a, b, f"{path}[{index}]")
            if found is not None:
                return found
    return path, _shown(one), _shown(two)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."
