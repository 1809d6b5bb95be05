"""Native `sidecar.unknown_hosts` through real sidecars (issue #13): a Host the outbound port
knows no callee for. `closed` (refuse) answers 502 and sends nothing; `open` (passthrough)
reaches a loopback server no Service declares, at the host and port the request named;
`plain` (unwritten) answers 404 as before. Each still reaches its callee by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import backend_of, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: closed
sidecar: {{outbound_port: {out_closed}, calls: [api], unknown_hosts: refuse}}
---
kind: Service
name: open
sidecar: {{outbound_port: {out_open}, calls: [api], unknown_hosts: passthrough}}
---
kind: Service
name: plain
sidecar: {{outbound_port: {out_plain}, calls: [api]}}
---
kind: Service
name: api
endpoints: [127.0.0.1:{api}]
"""
CALLERS = ("closed", "open", "plain")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("mesh-unknown-hosts")
    servers: dict[str, Any] = {"api": EchoServer("api"), "outside": EchoServer("outside")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=tuple(f"out_{c}" for c in CALLERS),
                       envoys={c: c for c in CALLERS}, extra_args=("--insecure-xds",)) as run:
        for caller in CALLERS:
            eventually(lambda c=caller: backend_of(run.ports[f"out_{c}"], "/",
                                                   {"Host": "api"}) == "api",
                       timeout=60, what=f"the {caller} sidecar to reach api")
        yield run


def status_of(served: Any, caller: str, host: str) -> int:
    return http_get(f"http://127.0.0.1:{served.ports[f'out_{caller}']}/", {"Host": host})[0]


def test_refuse_passthrough_and_unwritten(served: Any) -> None:
    outside = served.ports["outside"]
    assert status_of(served, "closed", f"127.0.0.1:{outside}") == 502
    assert status_of(served, "plain", f"127.0.0.1:{outside}") == 404
    assert backend_of(served.ports["out_open"], "/",
                      {"Host": f"127.0.0.1:{outside}"}) == "outside"
