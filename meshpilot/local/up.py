"""`meshpilot up`: control plane, a real Envoy and demo backends in one command, for a first try.

Every loopback endpoint the policy names gets a small echo backend (unless something already
listens there), so the bundled example answers at once and shows which backend served each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from pathlib import Path
from typing import Any

from meshpilot.base import types
from meshpilot.ir.model import Model
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess
from meshpilot.local.validator import EnvoyValidator
from meshpilot.runtime.app import Meshpilot, Settings, until_terminated

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_endpoints(model: Model) -> list[tuple[str, int]]:
    """(backend name, port) of every loopback address the policy sends traffic to: Service
    endpoints (named `service:port`, or `service-subset:port` when exactly one subset selects
    the endpoint, so a canary split shows which version answered) and raw endpoints."""
    found: dict[int, str] = {}
    for service in model.services:
        for endpoint in service.endpoints:
            if endpoint.host in _LOOPBACK:
                subsets = [n for n, sel in service.subsets if all(kv in endpoint.labels
                                                                 for kv in sel)]
                label = f"{service.name}-{subsets[0]}" if len(subsets) == 1 else service.name
                found.setdefault(endpoint.port, f"{label}:{endpoint.port}")
    for raw in model.raw:
        assignment: Any = None
        if raw.type_url == types.ENDPOINT:
            assignment = raw.message
        elif raw.type_url == types.CLUSTER and raw.message.HasField("load_assignment"):  # type: ignore[attr-defined]
            assignment = raw.message.load_assignment  # type: ignore[attr-defined]
        if assignment is None:
            continue
        for locality in assignment.endpoints:
            for lb in locality.lb_endpoints:
                sa = lb.endpoint.address.socket_address
                if sa.address in _LOOPBACK and sa.port_value:
                    found.setdefault(sa.port_value, f"{assignment.cluster_name}:{sa.port_value}")
    return sorted((name, port) for port, name in found.items())


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def listener_ports(model: Model, view: str) -> list[int]:
    """The ports Envoy listens on for `view`: its Gateway's listeners and raw listeners."""
    ports = {r.message.address.socket_address.port_value  # type: ignore[attr-defined]
             for r in model.raw if r.type_url == types.LISTENER
             and (r.views is None or view in r.views)}
    gateway = model.gateway(view)
    if gateway is not None:
        ports.update(listener.port for listener in gateway.listeners)
    return sorted(ports)


async def run_up(policy: Path, *, node_cluster: str, xds_address: str, admin_address: str,
                 envoy_admin_port: int, envoy_path: str | None = None,
                 ready: asyncio.Event | None = None, print_fn=print,
                 state_dir: Path | None = Path(".meshpilot")) -> None:
    """Secure as `meshpilot serve` is by default: the Envoy reaches xDS over TLS, trusting the
    mesh CA, with a node token for its view (both kept in `state_dir`, so `meshpilot status`
    and `meshpilot token` work beside it), and with the pre-push check of the same Envoy."""
    check = EnvoyValidator(envoy_path)
    mp = Meshpilot(Settings(policy=policy, xds_address=xds_address, admin_address=admin_address,
                            state_dir=state_dir),
                   resource_check=check)
    backends: list[EchoServer] = []
    envoy: EnvoyProcess | None = None
    with tempfile.TemporaryDirectory(prefix="meshpilot-up-") as work:
        try:
            await mp.start()
            if mp.controller.model is None:
                raise SystemExit("the policy does not load; fix the errors above and run again")
            for name, port in loopback_endpoints(mp.controller.model):
                if not _listening(port):
                    backend = EchoServer(name, port=port)
                    backend.start()
                    backends.append(backend)
            host, port = mp.xds_address.rsplit(":", 1)
            ca = Path(work) / "meshpilot-ca.crt"
            ca.write_bytes(mp.xds_ca_pem or b"")
            bootstrap = render_bootstrap(node_id=f"{node_cluster}-1", node_cluster=node_cluster,
                                         xds_addresses=[(host, int(port))],
                                         admin_address=("127.0.0.1", envoy_admin_port),
                                         xds_tls_ca=str(ca), xds_sni="meshpilot",
                                         xds_token=mp.tokens.issue("node", node_cluster),
                                         stats_flush_interval=2.0)
            envoy = EnvoyProcess(bootstrap, work, name="envoy", envoy_path=envoy_path)
            await asyncio.to_thread(envoy.start)
            await asyncio.to_thread(envoy.wait_ready, 30.0)
            ports = listener_ports(mp.controller.model, node_cluster)
            print_fn(_banner(mp, envoy, backends, ports, policy, state_dir))
            if ready is not None:
                ready.set()
            await until_terminated()
        finally:
            if envoy is not None:
                await asyncio.to_thread(envoy.stop)
            await mp.stop()
            check.close()
            for backend in backends:
                with contextlib.suppress(Exception):
                    backend.stop()


def _banner(mp: Meshpilot, envoy: EnvoyProcess, backends: list[EchoServer], ports: list[int],
            policy: Path, state_dir: Path | None) -> str:
    lines = ["", "meshpilot is up.",
             f"  control plane  xDS {mp.xds_address}, admin http://{mp.admin_address}",
             f"  envoy          admin {envoy.admin_url}",
             f"  demo backends  {', '.join(f'{b.name}' for b in backends) or '(none)'}", ""]
    for port in ports:
        lines.append(f"  try:   curl -s http://127.0.0.1:{port}/")
    files = sorted(policy.glob("*.y*ml")) if policy.is_dir() else [policy]
    shown = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    lines += [f"  edit:  {shown or policy} (changes apply on save; a bad edit is refused, "
              "see the log)",
              f"  see:   meshpilot status --admin-address {mp.admin_address}"
              + (f" --state-dir {state_dir}" if state_dir not in (None, Path(".meshpilot"))
                 else ""), "",
              "Ctrl-C stops everything.", ""]
    return "\n".join(lines)
