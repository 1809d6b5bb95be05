"""A tiny threaded HTTP/1.1 echo backend for demos and tests.

Every request is answered 200 with a JSON description of what arrived (backend name, method,
path, query, lower-cased headers, body size) and an `x-backend: NAME` header, so a test can tell
which backend Envoy routed to and what Envoy added or removed on the way. `/healthz` answers 200
and is not counted in `requests_seen`, so Envoy health checks do not skew load-balancing counts.

    python -m meshpilot.local.demo.echo --name v1 --port 9081
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from meshpilot.local.demo.runner import run_until_interrupted
from meshpilot.local.demo.server import DemoServer

__all__ = ["EchoServer", "main"]

HEALTH_PATH = "/healthz"

# A keep-alive connection idle this long is closed, so a forgotten client cannot pin a thread.
_IDLE_TIMEOUT_S = 60.0


class EchoServer(DemoServer):
    """An echo backend on (host, port); port 0 picks a free one. Serves in a daemon thread."""

    kind = "echo server"

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(name, host, port)
        self._httpd: _EchoHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _serve(self) -> int:
        httpd = _EchoHTTPServer((self.host, self._requested_port), self.name)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"echo-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return int(httpd.server_address[1])

    @property
    def forced_status(self) -> int | None:
        """When set, every request (health checks included) is answered with this status: a
        backend that has gone bad, for health checking and outlier detection."""
        return self._httpd.forced_status if self._httpd is not None else None

    @forced_status.setter
    def forced_status(self, status: int | None) -> None:
        if self._httpd is None:
            raise RuntimeError(f"echo server {self.name} is not running")
        self._httpd.forced_status = status

    def _shutdown(self) -> None:
        """Stop serving, close open keep-alive connections and release the port."""
        httpd, self._httpd = self._httpd, None
        assert httpd is not None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests_seen(self) -> int:
        """Requests answered so far, health checks excluded."""
        return 0 if self._httpd is None else self._httpd.counter.value


_MAX_DELAY_MS = 30_000  # a demo backend never holds a thread longer


class _Counter:
    """A thread-safe counter: handler threads increment it concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def increment(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class _EchoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Restarting a demo on the same port should not fail on lingering TIME_WAIT sockets.
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of connections (Envoy warming a pool,
    # a load test) overflows it and the dropped SYNs cost a 1 s retransmit each.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.backend_name = name
        self.counter = _Counter()
        self.forced_status: int | None = None
        # x-echo-fail-first: requests seen so far per x-echo-key, to fail the first N of them.
        self.attempts: dict[str, int] = {}
        self.attempts_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _EchoHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they end now."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients (Envoy included) reset connections routinely; a traceback per reset is noise.
        pass


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server_version = "meshpilot-echo"
    timeout = _IDLE_TIMEOUT_S
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per keep-alive request).
    disable_nagle_algorithm = True
    server: _EchoHTTPServer

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: no line per request on stderr

    def _answer(self, send_body: bool = True) -> None:
        body_bytes = len(self._read_body())
        url = urlsplit(self.path)
        if url.path == HEALTH_PATH:
            payload: dict[str, Any] = {"backend": self.server.backend_name, "status": "ok"}
        else:
            self.server.counter.increment()
            payload = {
                "backend": self.server.backend_name,
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": self._lowercased_headers(),
                "body_bytes": body_bytes,
            }
        delay_ms, status = self._requested_behaviour()
        if delay_ms:
            time.sleep(delay_ms / 1000)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-backend", self.server.backend_name)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _requested_behaviour(self) -> tuple[int, int]:
        """Tests and demos ask for a slow or failing answer: `x-echo-delay-ms: 300` waits before
        answering (timeouts), `x-echo-status: 503` answers with that status (faults), and
        `x-echo-fail-first: 2` with `x-echo-key: k` fails the first two requests carrying key k
        with 503 (or x-echo-status) and answers the rest 200: an upstream that recovers, for
        retries. A server-wide `forced_status` overrides everything."""
        if self.server.forced_status is not None:
            return 0, self.server.forced_status
        try:
            delay_ms = min(int(self.headers.get("x-echo-delay-ms", "0")), _MAX_DELAY_MS)
            status = int(self.headers.get("x-echo-status", "200"))
            fail_first = int(self.headers.get("x-echo-fail-first", "0"))
        except ValueError:
            return 0, 400
        if not 200 <= status <= 599:
            return 0, 400
        if fail_first > 0:
            key = self.headers.get("x-echo-key", "")
            with self.server.attempts_lock:
                seen = self.server.attempts.get(key, 0)
                self.server.attempts[key] = seen + 1
            if seen >= fail_first:
                return max(delay_ms, 0), 200
            return max(delay_ms, 0), status if status != 200 else 503
        return max(delay_ms, 0), status

    def _lowercased_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            key = key.lower()
            # Repeated headers are joined as HTTP allows for list-valued fields.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _read_body(self) -> bytes:
        """Consume the request body so the connection can be reused for the next request."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size_line = self.rfile.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk
        # Trailer section: header lines until an empty line.
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    """Run one EchoServer in the foreground until interrupted."""
    run_until_interrupted(
        argv, description="meshpilot demo echo backend",
        build=EchoServer,
        banner=lambda name, host, port: f"echo {name} listening on http://{host}:{port}")


if __name__ == "__main__":
    main()
