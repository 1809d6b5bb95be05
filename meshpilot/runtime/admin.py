"""The admin HTTP API: health, readiness, Prometheus metrics, proxy status and config dumps.

Binds to loopback by default: config dumps describe the fleet, and nothing here needs the network.
Every request passes admin_guard first (Host, Origin, token, JSON bodies); `ACCESS` says which
routes are open and which take registration tokens, everything else needs an operator token.
The API sees the process only through `AdminSources` (built by app.py), not the process object:
what it reads is listed in one place, and this module does not depend on the application.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshpilot.base.units import parse_duration
from meshpilot.ca.rotation import DEFAULT_OVERLAP, REISSUE_MODES, REISSUE_NOW, RotationError
from meshpilot.ca.tokens import TokenAuthority, TokenError, bearer
from meshpilot.discovery.http_api import REGISTRATION_PATHS, add_registration_routes
from meshpilot.discovery.registry import EndpointRegistry
from meshpilot.discovery.shared import SharedRegistrations
from meshpilot.runtime.admin_guard import Access, GuardSettings, guard
from meshpilot.runtime.dashboard import PAGE_PATHS, DashboardSources, add_dashboard_routes
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.render import snapshot_to_dict
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import ProxyRegistry


class RolloutControl(Protocol):
    """Staged rollouts, as the admin API drives them by hand (runtime/rollout.py)."""

    def promote(self, view: str | None = ...) -> Sequence[Any]: ...
    def abort(self, view: str | None = ...) -> Sequence[Any]: ...


class CaControl(Protocol):
    """The mesh CA's root rotation, as the admin API drives it (runtime/ca_rotation.py)."""

    def describe(self) -> dict[str, Any]: ...
    async def start(self, overlap: float | None = ..., reissue: str = ...) -> dict[str, Any]: ...
    def request_finish(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AdminSources:
    """Exactly what the admin API reads or calls. Callables, where the value changes while the
    process runs (readiness, the policy's status, the addresses once their ports are bound)."""

    is_ready: Callable[[], bool]  # a valid policy is serving
    policy_status: Callable[[], dict[str, Any]]  # PolicyStatus.describe()
    addresses: Callable[[], dict[str, str]]  # {"xds_address": ..., "admin_address": ...}
    cache: SnapshotCache  # views and their newest snapshots
    # A view's snapshot, built (off the event loop) if no one asked for it yet; None before a
    # first valid policy. Raises PolicyError if the view cannot be built.
    snapshot_of: Callable[[str], Awaitable[Snapshot | None]]
    proxies: ProxyRegistry  # connected Envoys
    endpoints: EndpointRegistry  # the self-registration routes' registry
    metrics: CollectorRegistry
    tokens: TokenAuthority | None  # checks the callers' tokens; None: --insecure-admin
    admin_hosts: tuple[str, ...] = ()  # --admin-host: more names the Host header may carry
    # The opt-outs in force (--insecure-admin, ...), one sentence each: /readyz shows them.
    warnings: Callable[[], Sequence[str]] = field(default=lambda: ())
    # More of /debug/status: the pre-push check, the newest edits' convergence.
    status_extra: Callable[[], dict[str, Any]] = field(default=lambda: {})
    ca: CaControl | None = None  # the root rotation (/v1/ca/...); None: no CA to rotate
    # With a store (replicas, runtime/fleet.py): every replica's Envoys, the registrations'
    # writes, and this replica's name and store in /debug/status. None: this process only.
    fleet: Callable[[], Awaitable[dict[str, Any]]] | None = None
    registrations: SharedRegistrations | None = None
    replica: Callable[[], dict[str, Any]] | None = None
    # Staged rollouts (runtime/rollout.py), newest first: each {"id", "view", "state"
    # ("watching" | "promoted" | "rolled_back" | "aborted"), "started" (unix), "canary" (node
    # ids), "total" (Envoys of the view), "error_rate" (None: no traffic seen), "threshold",
    # "reason", "edit"}. None: this process runs no rollouts.
    rollouts: Callable[[], list[dict[str, Any]]] | None = None
    # Request rates from the Envoys' metrics service (runtime/envoy_metrics.py): each {"node",
    # "view", "cluster" (upstream cluster, "" for the downstream total), "rq_per_s",
    # "err_per_s", "updated" (unix)}. None: no metrics service.
    request_rates: Callable[[], list[dict[str, Any]]] | None = None
    # Promote or abort a rollout being watched (/v1/rollouts/promote, /v1/rollouts/abort).
    rollout_control: RolloutControl | None = None


# Who may call what without an operator token (admin_guard); every other route needs one.
ACCESS: dict[str, Access] = {
    "/healthz": Access.OPEN, "/readyz": Access.OPEN, "/metrics": Access.OPEN,
    **{path: Access.REGISTRATION for path in REGISTRATION_PATHS},
    **{path: Access.PAGE for path in PAGE_PATHS},  # the dashboard's page: no data in it
}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=True) + "\n", status=status,
                        content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON object body (the guard already required application/json); empty: {}."""
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _rotation_options(body: dict[str, Any]) -> tuple[float | None, str]:
    """(overlap in seconds or None for a finish by hand, reissue mode) of a rotate-root body:
    {"overlap": "24h" | 86400 | "manual", "reissue": "now" | "at-renewal"}."""
    unknown = set(body) - {"overlap", "reissue"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}: expected overlap, "
                         "reissue")
    overlap: float | None = DEFAULT_OVERLAP
    value = body.get("overlap", DEFAULT_OVERLAP)
    if value == "manual":
        overlap = None
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("overlap: a duration (\"24h\"), seconds, or \"manual\"")
    else:
        try:
            overlap = parse_duration(value) if isinstance(value, str) else float(value)
        except ValueError as e:
            raise ValueError(f"overlap: {e}") from None
        if not 0 <= overlap <= 366 * 24 * 3600:
            raise ValueError("overlap: between 0 and 366 days")
    reissue = body.get("reissue", REISSUE_NOW)
    if reissue not in REISSUE_MODES:
        raise ValueError(f"reissue: one of {', '.join(REISSUE_MODES)}")
    return overlap, reissue


def make_app(sources: AdminSources) -> web.Application:
    routes = web.RouteTableDef()
    cache = sources.cache

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        # Opt-outs are shown where every probe and every operator looks, not only in the log.
        warned = "".join(f"WARNING: {warning}\n" for warning in sources.warnings())
        if sources.is_ready():
            return web.Response(text="ready\n" + warned)
        return web.Response(text="not ready: no valid policy loaded yet\n" + warned, status=503)

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(sources.metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/debug/proxies")
    async def proxies(_: web.Request) -> web.Response:
        if sources.fleet is not None:
            return _json(await sources.fleet())
        return _json({"proxies": sources.proxies.describe()})

    @routes.get("/debug/status")
    async def status(_: web.Request) -> web.Response:
        return _json({
            "policy": sources.policy_status(),
            "views": {v: (s.version if (s := cache.get(v)) else None)
                      for v in cache.all_views()},
            "proxies": len(sources.proxies.describe()),
            **sources.addresses(),
            **sources.status_extra(),
            **({"ca": sources.ca.describe()} if sources.ca is not None else {}),
            **(sources.replica() if sources.replica is not None else {}),
        })

    # The mesh CA's root rotation (docs/operations.md, "Rotating the CA root"): operators only.
    @routes.get("/debug/ca")
    async def ca_status(_: web.Request) -> web.Response:
        if sources.ca is None:
            return _json({"error": "this process has no mesh CA"}, 404)
        return _json(sources.ca.describe())

    @routes.post("/v1/ca/rotate-root")
    async def rotate_root(request: web.Request) -> web.Response:
        if sources.ca is None:
            return _json({"error": "this process has no mesh CA"}, 404)
        try:
            overlap, reissue = _rotation_options(await _body(request))
            return _json(await sources.ca.start(overlap, reissue))
        except RotationError as e:
            return _json({"error": str(e)}, 409)
        except ValueError as e:
            return _json({"error": str(e)}, 400)

    @routes.post("/v1/ca/finish-rotation")
    async def finish_rotation(_: web.Request) -> web.Response:
        if sources.ca is None:
            return _json({"error": "this process has no mesh CA"}, 404)
        try:
            return _json(sources.ca.request_finish(), 202)
        except RotationError as e:
            return _json({"error": str(e)}, 409)

    @routes.get("/debug/rollouts")
    async def rollouts(_: web.Request) -> web.Response:
        if sources.rollouts is None:
            return _json({"error": "this process runs no rollouts"}, 404)
        return _json({"rollouts": sources.rollouts()})

    async def _by_hand(request: web.Request, action: str) -> web.Response:
        if sources.rollout_control is None or sources.rollouts is None:
            return _json({"error": "this process runs no rollouts"}, 404)
        try:
            body = await _body(request)
            unknown = set(body) - {"view"}
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}: expected view")
            view = body.get("view")
            if view is not None and not isinstance(view, str):
                raise ValueError("view: a string")
        except ValueError as e:
            return _json({"error": str(e)}, 400)
        control = sources.rollout_control
        try:
            ended = (control.promote if action == "promote" else control.abort)(view)
        except ValueError as e:  # RolloutError: nothing to promote or abort there
            return _json({"error": str(e)}, 409)
        ids = {rollout.id for rollout in ended}
        return _json({"rollouts": [r for r in sources.rollouts() if r["id"] in ids]})

    @routes.post("/v1/rollouts/promote")
    async def promote(request: web.Request) -> web.Response:
        return await _by_hand(request, "promote")

    @routes.post("/v1/rollouts/abort")
    async def abort(request: web.Request) -> web.Response:
        return await _by_hand(request, "abort")

    @routes.get("/debug/metrics/envoys")
    async def envoy_rates(_: web.Request) -> web.Response:
        if sources.request_rates is None:
            return _json({"error": "this process has no metrics service"}, 404)
        return _json({"request_rates": sources.request_rates()})

    @routes.get("/debug/config_dump")
    async def config_dump(request: web.Request) -> web.Response:
        node = request.query.get("node")
        view = request.query.get("view")
        if node:
            conns = [c for c in sources.proxies.by_node(node) if c.view is not None]
            if not conns:
                return _json({"error": f"no connected proxy with node id {node!r}"}, 404)
            view = conns[0].view
            followed = conns[0].stream.snapshot
            if followed is not None:  # what that Envoy follows (a rollout may hold it back)
                return _json(snapshot_to_dict(followed))
        if not view:
            return _json({"error": "give ?node=ID or ?view=NAME", "views": cache.all_views()},
                         400)
        snapshot = await sources.snapshot_of(view)
        if snapshot is None:
            return _json({"error": "no valid policy loaded yet"}, 503)
        return _json(snapshot_to_dict(snapshot))

    # Self-registration (/v1/registrations) and /debug/discovery: docs/discovery.md.
    add_registration_routes(routes, sources.endpoints, sources.tokens, sources.registrations)

    app = web.Application(middlewares=[guard(GuardSettings(
        tokens=sources.tokens, address=lambda: sources.addresses()["admin_address"],
        hosts=sources.admin_hosts, access=ACCESS))])

    # The web dashboard (runtime/dashboard.py): its page, and what it shows, for operators.
    async def fleet() -> dict[str, Any]:
        if sources.fleet is not None:
            return await sources.fleet()
        return {"proxies": sources.proxies.describe()}

    def still_allowed(request: web.Request) -> bool:
        if sources.tokens is None:
            return True
        try:
            sources.tokens.verify(bearer(request.headers.get("Authorization")) or "", "operator")
            return True
        except TokenError:
            return False

    add_dashboard_routes(routes, app, DashboardSources(
        proxies=fleet,
        status=lambda: {"policy": sources.policy_status(),
                        "views": {v: (s.version if (s := cache.get(v)) else None)
                                  for v in cache.all_views()},
                        **sources.addresses(), **sources.status_extra(),
                        **(sources.replica() if sources.replica is not None else {})},
        snapshots=lambda: [s for v in cache.all_views() if (s := cache.get(v)) is not None],
        rollouts=sources.rollouts, request_rates=sources.request_rates,
        still_allowed=still_allowed))
    app.add_routes(routes)
    return app
