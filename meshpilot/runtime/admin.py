"""The admin HTTP API: health, readiness, Prometheus metrics, proxy status and config dumps.

Binds to loopback by default: config dumps describe the fleet, and nothing here needs the network.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshpilot.discovery.http_api import add_registration_routes
from meshpilot.xds.render import snapshot_to_dict

if TYPE_CHECKING:
    from meshpilot.runtime.app import Meshpilot


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=True) + "\n", status=status,
                        content_type="application/json")


def make_app(mp: Meshpilot) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/healthz")
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.get("/readyz")
    async def readyz(_: web.Request) -> web.Response:
        if mp.controller.ready and mp.serving:
            return web.Response(text="ready\n")
        return web.Response(text="not ready: no valid policy loaded yet\n", status=503)

    @routes.get("/metrics")
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(mp.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/debug/proxies")
    async def proxies(_: web.Request) -> web.Response:
        return _json({"proxies": mp.registry.describe()})

    @routes.get("/debug/status")
    async def status(_: web.Request) -> web.Response:
        return _json({
            "policy": mp.controller.status.describe(),
            "views": {v: (s.version if (s := mp.cache.get(v)) else None)
                      for v in mp.cache.all_views()},
            "proxies": len(mp.registry.describe()),
            "xds_address": mp.xds_address, "admin_address": mp.admin_address,
        })

    @routes.get("/debug/config_dump")
    async def config_dump(request: web.Request) -> web.Response:
        node = request.query.get("node")
        view = request.query.get("view")
        if node:
            conns = [c for c in mp.registry.by_node(node) if c.view is not None]
            if not conns:
                return _json({"error": f"no connected proxy with node id {node!r}"}, 404)
            view = conns[0].view
        if not view:
            return _json({"error": "give ?node=ID or ?view=NAME", "views": mp.cache.all_views()},
                         400)
        snapshot = mp.cache.get(view) or mp.cache.get_or_build(view)
        if snapshot is None:
            return _json({"error": "no valid policy loaded yet"}, 503)
        return _json(snapshot_to_dict(snapshot))

    # Self-registration (/v1/registrations) and /debug/discovery: docs/discovery.md.
    add_registration_routes(routes, mp.endpoints)

    app = web.Application()
    app.add_routes(routes)
    return app
