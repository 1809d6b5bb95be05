"""`meshpilot diff`: what applying a policy folder would change, in Envoy terms, view by view.

Both sides are rendered the way config dumps render them (`xds/render.py`: Envoy's field names,
secret values replaced by their fingerprint, `xds/redact.py`), then compared resource by
resource: added, removed, and changed with a unified diff of the resource's YAML, so a change
reads field by field. Like `terraform plan`, the answer is also the exit status: 1 when
something would change, 0 when nothing would, 2 when it cannot tell (an invalid policy, a server
that cannot be reached, a git revision that does not exist).

The other side ("before") is one of:
- the running server (`--server`): its views' snapshots, read through the admin API as an
  operator; the folder is translated with the endpoints the server discovered (so a registered
  instance is not shown as removed), and the workload certificates it issues itself
  (`spiffe/*` Secrets) are left out of the comparison: they are not in any policy;
- another folder (`--against DIR`);
- a git revision of the folder (`--against-git REV`): the folder as it is in that commit,
  exported with `git archive` into a temporary folder.

The views compared: every Gateway and every Service with a sidecar on either side, the views
the server has (with `--server`), and any named with `--view`.
"""

from __future__ import annotations

import difflib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from google.protobuf import json_format, symbol_database

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.discovery.registry import EndpointRegistry, Instance
from meshpilot.inputs.loader import load_policy
from meshpilot.ir.model import Model
from meshpilot.runtime.admin_client import AdminClient, AdminError
from meshpilot.translators import Translation
from meshpilot.translators.plugins import Plugin
from meshpilot.xds.render import message_to_dict, snapshot_to_dict

__all__ = ["DiffError", "ViewDiff", "compare_folders", "compare_git", "compare_server",
           "diff_views", "report"]

# view -> type (short name) -> resource name -> the resource as a dict
Rendered = dict[str, dict[str, dict[str, dict[str, Any]]]]

RUNTIME_SECRETS = "spiffe/"  # workload certificates the server issues (translators/mtls.py)


class DiffError(Exception):
    """One side cannot be rendered; the message says why (exit status 2)."""


@dataclass
class ViewDiff:
    view: str
    added: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str, list[str]]] = field(default_factory=list)  # diff lines

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def views_of(model: Model) -> set[str]:
    return {g.name for g in model.gateways} | {s.name for s in model.services if s.sidecar}


def _load(folder: Path, allowed_files: Iterable[Path]) -> Model:
    try:
        return load_policy(folder, list(allowed_files))
    except PolicyError as e:
        raise DiffError("\n".join(str(issue) for issue in e.issues)
                        + f"\n{len(e.issues)} problem(s) in {folder}") from None
    except OSError as e:
        raise DiffError(f"cannot read {folder}: {e}") from None


def render_model(model: Model, views: Iterable[str], plugins: Iterable[Plugin | object] = (),
                 discovered: Mapping[str, Any] | None = None) -> Rendered:
    translation = Translation(model, plugins, discovered=discovered)
    out: Rendered = {}
    for view in sorted(set(views)):
        try:
            data = snapshot_to_dict(translation.snapshot(view))
        except PolicyError as e:
            raise DiffError("\n".join(str(issue) for issue in e.issues)) from None
        out[view] = _by_name(data)
    return out


def _by_name(data: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A rendered snapshot's resources by type and name (ClusterLoadAssignments are named by
    their cluster_name)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for short, resources in data.get("resources", {}).items():
        out[short] = {str(r.get("name", r.get("cluster_name", ""))): r for r in resources}
    return out


def compare_folders(before: Path, after: Path, views: Iterable[str] = (),
                    allowed_files: Iterable[Path] = (),
                    plugins: Iterable[Plugin | object] = ()) -> list[ViewDiff]:
    """`after` against `before`, over the views either has (and `views`)."""
    allowed = list(allowed_files)
    old, new = _load(before, allowed), _load(after, allowed)
    wanted = views_of(old) | views_of(new) | set(views)
    return diff_views(render_model(old, wanted, plugins), render_model(new, wanted, plugins))


def compare_git(folder: Path, revision: str, views: Iterable[str] = (),
                allowed_files: Iterable[Path] = (),
                plugins: Iterable[Plugin | object] = ()) -> list[ViewDiff]:
    """`folder` against itself at `revision` of the git repository holding it."""
    folder = folder.resolve()
    top = Path(_git(folder, "rev-parse", "--show-toplevel").decode().strip())
    relative = folder.relative_to(top).as_posix() if folder != top else ""
    # `REV:path` names the folder's tree at REV; git archive exports it without touching the
    # work tree (or the index).
    archive = _git(top, "archive", "--format=tar", f"{revision}:{relative}")
    with tempfile.TemporaryDirectory(prefix="meshpilot-diff-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")  # refuses links out of it, absolute paths
        return compare_folders(Path(tmp), folder, views, allowed_files, plugins)


def compare_server(admin: AdminClient, folder: Path, views: Iterable[str] = (),
                   allowed_files: Iterable[Path] = (),
                   plugins: Iterable[Plugin | object] = ()) -> list[ViewDiff]:
    """`folder` against what the running server serves, over its views and the folder's."""
    model = _load(folder, list(allowed_files))
    before, discovered = render_server(admin, views_of(model) | set(views))
    after = render_model(model, set(before) | views_of(model) | set(views), plugins,
                         discovered)
    return diff_views(before, after, skip_runtime=True)


def _git(cwd: Path, *args: str) -> bytes:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False,
                                timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiffError(f"git {' '.join(args)}: {e}") from None
    if result.returncode != 0:
        raise DiffError(f"git {' '.join(args)}: {result.stderr.decode().strip()}")
    return result.stdout


def render_server(admin: AdminClient, views: Iterable[str]) -> tuple[Rendered, dict[str, Any]]:
    """The server's snapshot of every view it has and of `views`; and the endpoints it
    discovered (for the folder's translation)."""
    try:
        status = admin.get_json("/debug/status")
        discovery = admin.get_json("/debug/discovery")
        wanted = sorted({v for v, version in status.get("views", {}).items() if version}
                        | set(views))
        out: Rendered = {}
        for view in wanted:
            data = admin.get_json(f"/debug/config_dump?view={_quote(view)}")
            out[view] = {short: {name: _canonical(short, resource)
                                 for name, resource in resources.items()}
                         for short, resources in _by_name(data).items()}
    except AdminError as e:
        raise DiffError(str(e)) from None
    return out, discovered_endpoints(discovery.get("instances", []))


def _canonical(short: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A resource from the admin API (JSON with sorted keys) in the order `meshpilot render`
    gives its fields, so both sides of a diff read alike."""
    type_url = types.BY_SHORT_NAME.get(short)
    if type_url is None:
        return resource
    try:
        cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
        return message_to_dict(json_format.ParseDict(resource, cls()))
    except (KeyError, json_format.ParseError):
        return resource  # a type this build does not know: compared as it came


def _quote(text: str) -> str:
    return quote(text, safe="")


def discovered_endpoints(instances: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The server's discovered instances (as /debug/discovery describes them) as the endpoints
    a Translation adds to the policy's, in the registry's own order."""
    registry = EndpointRegistry()
    by_source: dict[str, list[Instance]] = {}
    for item in instances:
        host, _, port = str(item["address"]).rpartition(":")
        by_source.setdefault(str(item.get("source", "registration")), []).append(Instance(
            id=str(item["id"]), service=str(item["service"]), host=host.strip("[]"),
            port=int(port), labels=tuple(sorted(dict(item.get("labels") or {}).items())),
            source=str(item.get("source", "registration"))))
    for source, found in by_source.items():
        registry.replace_source(source, found)
    return registry.endpoints()


def diff_views(before: Rendered, after: Rendered, *, skip_runtime: bool = False
               ) -> list[ViewDiff]:
    out = []
    for view in sorted(set(before) | set(after)):
        old, new = before.get(view, {}), after.get(view, {})
        found = ViewDiff(view)
        for short in sorted(set(old) | set(new), key=_type_order):
            was, now = old.get(short, {}), new.get(short, {})
            for name in sorted(set(was) | set(now)):
                if skip_runtime and short == "secrets" and name.startswith(RUNTIME_SECRETS):
                    continue
                if name not in was:
                    found.added.append((short, name, now[name]))
                elif name not in now:
                    found.removed.append((short, name))
                elif was[name] != now[name]:
                    found.changed.append((short, name, _yaml_diff(was[name], now[name])))
        out.append(found)
    return out


_ORDER = ("clusters", "endpoints", "listeners", "routes", "secrets")


def _type_order(short: str) -> tuple[int, str]:
    return (_ORDER.index(short) if short in _ORDER else len(_ORDER), short)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (certificates, Lua code) as YAML blocks, one line per line, so a
    diff shows the lines that changed; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def _yaml(resource: Mapping[str, Any]) -> list[str]:
    return yaml.dump(resource, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True).splitlines()


def _yaml_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return list(difflib.unified_diff(_yaml(before), _yaml(after), "before", "after",
                                     n=2, lineterm=""))[2:]  # the ---/+++ header says nothing


def report(diffs: Iterable[ViewDiff], against: str) -> str:
    """The diff as text: per view, a summary line, then each resource."""
    lines: list[str] = []
    changed_views = 0
    for d in diffs:
        if not d:
            lines.append(f"view {d.view}: no change")
            continue
        changed_views += 1
        lines.append(f"view {d.view}: {len(d.added)} added, {len(d.removed)} removed, "
                     f"{len(d.changed)} changed")
        for short, name, resource in d.added:
            lines.append(f"+ {short} {name}")
            lines.extend(f"    + {line}" for line in _yaml(resource))
        for short, name in d.removed:
            lines.append(f"- {short} {name}")
        for short, name, diff in d.changed:
            lines.append(f"~ {short} {name}")
            lines.extend(f"    {line}" for line in diff)
    lines.append(f"{changed_views} view(s) would change (against {against})"
                 if changed_views else f"no change (against {against})")
    return "\n".join(lines) + "\n"
