"""The web dashboard on the admin port: one page, its script and its style sheet (package data
in `dashboard_assets/`, nothing from the network), and what the page shows, as one JSON
document (`/debug/dashboard`) and as a stream of it (`/debug/dashboard/events`, server-sent
events: a new document whenever anything in it changed).

What it shows: the fleet (each Envoy, its view, sync state per type, its last rejection and
the policy line of what it refused), the policy's load (errors at file:line), the newest edits
and their convergence, rollouts in progress, the service graph (each view, its Envoys and the
upstream clusters its snapshot names) and the Envoys' request rates, the last two when the
process has a source for them.

Security (docs/security.md, "The dashboard"): the page and its assets are `Access.PAGE` (Host-
and Origin-checked, no token, no data of the fleet in them); the data routes are operator
routes like every other, so the page asks for the operator token, keeps it in the tab's
`sessionStorage` and sends it as `Authorization: Bearer` on its own fetches. No cookie is ever
accepted, so no other site can make a browser send a credential (no CSRF), and the page's
Content-Security-Policy lets only meshpilot's own script run and talk only to meshpilot.

This module reads the process only through `DashboardSources` (admin.py builds it from
`AdminSources`); it must not import admin.py or the application.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from meshpilot.base import types
from meshpilot.xds.snapshot import Snapshot

# The page's routes (admin_guard.Access.PAGE): static, the same for every caller.
PAGE_PATHS = ("/", "/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css")
DATA_PATH = "/debug/dashboard"
EVENTS_PATH = "/debug/dashboard/events"

_ASSETS = {"dashboard.html": "text/html", "dashboard.js": "text/javascript",
           "dashboard.css": "text/css"}
# Only meshpilot's own script and style, talking only to meshpilot; never framed.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                 "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

POLL_SECONDS = 0.5  # how often an open event stream looks for a change (at most)
LOAD_FACTOR = 10.0  # ... but waits at least ten times what a look costs (a large fleet)
KEEPALIVE_SECONDS = 15.0  # a comment line on a quiet stream, so proxies keep it open
MAX_STREAMS = 32  # open event streams at once; more are refused (503)


@dataclass(frozen=True)
class DashboardSources:
    """What the dashboard reads; admin.py builds it from AdminSources."""

    proxies: Callable[[], Awaitable[dict[str, Any]]]  # {"proxies": [...], ...} as /debug/proxies
    status: Callable[[], dict[str, Any]]  # /debug/status's document
    snapshots: Callable[[], Iterable[Snapshot]]  # every view's newest built snapshot
    # Staged rollouts and the Envoys' request rates (runtime/rollout*); None: no source.
    rollouts: Callable[[], list[dict[str, Any]]] | None = None
    request_rates: Callable[[], list[dict[str, Any]]] | None = None
    # Whether the request's credential still holds (checked at every look of an open stream):
    # a token that expires, or a key rotated, ends the stream, and the page must log in again.
    still_allowed: Callable[[web.Request], bool] = lambda request: True


def asset(name: str) -> bytes:
    return resources.files("meshpilot.runtime").joinpath("dashboard_assets", name).read_bytes()


def service_graph(snapshots: Iterable[Snapshot], proxies: list[dict[str, Any]],
                  rates: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Which view (and which of its Envoys) calls which upstream cluster: a view's snapshot
    names the clusters its Envoys may send to. With request rates, each edge and each view
    carries the Envoys' requests and errors per second (summed over the view's Envoys)."""
    envoys: dict[str, list[str]] = {}
    for proxy in proxies:
        if proxy.get("view"):
            envoys.setdefault(str(proxy["view"]), []).append(str(proxy.get("node_id", "")))
    edge_rates: dict[tuple[str, str], list[float]] = {}
    for rate in rates or ():
        key = (str(rate.get("view", "")), str(rate.get("cluster", "")))
        total = edge_rates.setdefault(key, [0.0, 0.0])
        total[0] += float(rate.get("rq_per_s") or 0.0)
        total[1] += float(rate.get("err_per_s") or 0.0)

    def rated(view: str, cluster: str) -> dict[str, float | None]:
        found = edge_rates.get((view, cluster))
        return {"rq_per_s": found[0] if found else None,
                "err_per_s": found[1] if found else None}

    views, edges, clusters = [], [], set()
    for snapshot in sorted(snapshots, key=lambda s: s.view):
        names = list(snapshot.get(types.CLUSTER))
        clusters.update(names)
        views.append({"view": snapshot.view, "envoys": sorted(envoys.get(snapshot.view, [])),
                      "clusters": len(names), **rated(snapshot.view, "")})
        edges.extend({"view": snapshot.view, "cluster": name, **rated(snapshot.view, name)}
                     for name in names)
    return {"views": views, "clusters": sorted(clusters), "edges": edges}


def _fleet_row(proxy: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one Envoy of /debug/proxies (nonces, versions and timestamps
    left out: a tenth of the bytes, and a document that changes only when the page would)."""
    row = {key: proxy.get(key) for key in ("node_id", "view", "variant", "envoy_version")}
    if "replica" in proxy:
        row["replica"] = proxy["replica"]
    row["types"] = {}
    for short, state in (proxy.get("types") or {}).items():
        rejection = state.get("last_rejection")
        row["types"][short] = {
            "status": state.get("status"), "resources": state.get("resources"),
            "acks": state.get("acks"), "nacks": state.get("nacks"),
            "last_rejection": None if not rejection else {
                "message": rejection.get("message"), "at": rejection.get("at")},
            "held_back": [{"name": held.get("name"), "message": held.get("message"),
                           "origin": held.get("origin")}
                          for held in state.get("held_back") or ()],
        }
    return row


async def dashboard_state(sources: DashboardSources) -> dict[str, Any]:
    """Everything the page shows, as JSON. Deterministic for one state of the process (no
    clock of its own), so the event stream can tell a change by comparing documents."""
    fleet = await sources.proxies()
    proxies = [_fleet_row(proxy) for proxy in fleet.get("proxies", [])]
    status = sources.status()
    rollouts = sources.rollouts() if sources.rollouts is not None else None
    rates = sources.request_rates() if sources.request_rates is not None else None
    return {
        "proxies": proxies,
        "fleet_error": fleet.get("store_error"),
        "replicas": fleet.get("replicas"),
        "policy": status.get("policy"),
        "views": status.get("views"),
        "edits": status.get("edits"),
        "prepush": status.get("prepush"),
        "replica": status.get("replica"),
        "admin_address": status.get("admin_address"),
        "rollouts": rollouts,
        "request_rates": rates,
        "graph": service_graph(sources.snapshots(), proxies, rates),
    }


def _compact(data: Any) -> str:
    # Not sorted: every dict here is built in a fixed order, so one state is one text (and
    # sorting doubled the cost of a look at a thousand Envoys).
    return json.dumps(data, separators=(",", ":"), default=str)


class SharedState:
    """The state as the event streams send it, computed once per look however many streams
    are open: a stream asking within `max_age` of the last computation (or while one runs)
    gets that one. So N open dashboards cost one look (one store read with replicas) per
    interval, not N."""

    def __init__(self, sources: DashboardSources, clock: Callable[[], float],
                 max_age: float = POLL_SECONDS / 2):
        # (With a large fleet a look costs more: streams then look less often, see
        # `interval`, so the dashboards never take more than about 1/LOAD_FACTOR of a core.)
        self.sources = sources
        self.clock = clock
        self.max_age = max_age
        self._text = ""
        self._at = float("-inf")
        self._lock = asyncio.Lock()
        self.computed = 0  # how many times the state was built (for tests)
        self.cost = 0.0  # seconds the newest build took (its CPU, mostly)

    async def text(self) -> str:
        async with self._lock:
            if self.clock() - self._at >= self.max_age:
                started = time.perf_counter()
                self._text = _compact(await dashboard_state(self.sources))
                self.cost = time.perf_counter() - started
                self._at = self.clock()
                self.computed += 1
            return self._text

    def interval(self) -> float:
        """How long a stream waits before its next look."""
        return max(POLL_SECONDS, LOAD_FACTOR * self.cost)


def add_dashboard_routes(routes: web.RouteTableDef, app: web.Application,
                         sources: DashboardSources) -> None:
    """The page, its assets, the state and its event stream. `app` is told to end open
    streams when it shuts down, so a browser left open never holds up a stop."""
    stopping = asyncio.Event()
    open_streams: set[web.StreamResponse] = set()
    shared = SharedState(sources, lambda: asyncio.get_running_loop().time())

    async def stop_streams(_: web.Application) -> None:
        stopping.set()

    app.on_shutdown.append(stop_streams)

    def static(name: str) -> web.Response:
        return web.Response(body=asset(name), content_type=_ASSETS[name], charset="utf-8",
                            headers=_PAGE_HEADERS)

    @routes.get("/")
    @routes.get("/dashboard")
    async def page(_: web.Request) -> web.Response:
        return static("dashboard.html")

    @routes.get("/dashboard/dashboard.js")
    async def script(_: web.Request) -> web.Response:
        return static("dashboard.js")

    @routes.get("/dashboard/dashboard.css")
    async def style(_: web.Request) -> web.Response:
        return static("dashboard.css")

    @routes.get(DATA_PATH)
    async def state(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(await dashboard_state(sources), indent=2,
                                            sort_keys=True, default=str) + "\n",
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    @routes.get(EVENTS_PATH)
    async def events(request: web.Request) -> web.StreamResponse:
        if len(open_streams) >= MAX_STREAMS:
            return web.json_response({"error": f"{MAX_STREAMS} event streams are open already; "
                                               f"poll {DATA_PATH} instead"}, status=503)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        open_streams.add(response)
        last, quiet = None, 0.0
        try:
            while not stopping.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the browser went away (aiohttp does not cancel the handler)
                if not sources.still_allowed(request):
                    break  # the token expired or the key was rotated since the stream opened
                text = await shared.text()
                if text != last:
                    await response.write(f"event: state\ndata: {text}\n\n".encode())
                    last, quiet = text, 0.0
                elif quiet >= KEEPALIVE_SECONDS:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                wait = shared.interval()
                try:
                    await asyncio.wait_for(stopping.wait(), wait)
                except TimeoutError:
                    quiet += wait
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            open_streams.discard(response)
        return response
