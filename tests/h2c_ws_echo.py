"""HTTP/2 cleartext and websocket pieces of the conformance echo (loopback only).

`H2cEchoServer` answers prior-knowledge HTTP/2 (no TLS, no h2c upgrade) with what `reply`
makes of each request: the echo of the upstream echo-basic's h2c port. `h2c_get` is a
prior-knowledge HTTP/2 client for one request. `websocket_echo` is the server side of an
RFC 6455 websocket on a BaseHTTPRequestHandler after its upgrade request: every text or
binary message comes back unchanged. `websocket_round_trip` is a client that opens one
(with aiohttp, an implementation independent of the echo's) and checks both kinds come back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events

# (method, path, headers as sent, in order) -> (status, headers, body)
Reply = Callable[[str, str, list[tuple[str, str]]], tuple[int, list[tuple[str, str]], bytes]]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class _H2cHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        connection.initiate_connection()
        self.request.sendall(connection.data_to_send())
        heads: dict[int, list[tuple[str, str]]] = {}
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            for event in connection.receive_data(data):
                ended: int | None = None
                if isinstance(event, h2.events.RequestReceived):
                    heads[event.stream_id] = list(event.headers)
                    ended = event.stream_id if event.stream_ended is not None else None
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length,
                                                         event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = event.stream_id
                if ended is not None and ended in heads:
                    self._answer(connection, ended, heads.pop(ended))
            try:
                self.request.sendall(connection.data_to_send())
            except OSError:
                return

    def _answer(self, connection: h2.connection.H2Connection, stream: int,
                head: list[tuple[str, str]]) -> None:
        server: Any = self.server
        pseudo = dict(h for h in head if h[0].startswith(":"))
        status, headers, body = server.reply(pseudo.get(":method", ""), pseudo.get(":path", ""),
                                             head)
        connection.send_headers(stream, [(":status", str(status)), *headers,
                                         ("content-length", str(len(body)))])
        connection.send_data(stream, body, end_stream=True)


class H2cEchoServer:
    """Prior-knowledge HTTP/2 on 127.0.0.1 (a port from the OS), answering with `reply`."""

    def __init__(self, reply: Reply):
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _H2cHandler)
        self.server.daemon_threads = True
        self.server.reply = reply  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()


def h2c_get(port: int, path: str, headers: dict[str, str], method: str = "GET",
            ) -> tuple[int, dict[str, str], bytes]:
    """One request over prior-knowledge HTTP/2 to 127.0.0.1:`port` (Host as :authority)."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        connection.initiate_connection()
        rest = {k.lower(): v for k, v in headers.items() if k.lower() != "host"}
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, [
            (":method", method), (":scheme", "http"),
            (":authority", headers.get("Host", "")), (":path", path), *rest.items()],
            end_stream=True)
        sock.sendall(connection.data_to_send())
        status, answer, body = 0, {}, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed before the answer ended")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == ":status":
                            status = int(value)
                        else:
                            answer[name] = f"{answer[name]},{value}" if name in answer else value
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    return status, answer, body
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset (code {event.error_code})")
            sock.sendall(connection.data_to_send())


# ---- websocket --------------------------------------------------------------------------------


def is_websocket_upgrade(handler: BaseHTTPRequestHandler) -> bool:
    return ("websocket" in (handler.headers.get("Upgrade") or "").lower()
            and bool(handler.headers.get("Sec-WebSocket-Key")))


def websocket_echo(handler: BaseHTTPRequestHandler) -> None:
    """Accept the handler's upgrade request, then echo messages until the client closes."""
    key = handler.headers["Sec-WebSocket-Key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True  # no HTTP after the websocket
    reader, writer = handler.rfile, handler.wfile
    try:
        while True:
            head = reader.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", reader.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", reader.read(8))[0]
            mask = reader.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(reader.read(length)))
            if opcode == 0x8:  # close: answer it and end
                writer.write(_frame(0x8, payload[:2]))
                writer.flush()
                return
            if opcode == 0x9:  # ping
                writer.write(_frame(0xA, payload))
            elif opcode in (0x1, 0x2):  # text, binary (unfragmented, as the clients send)
                writer.write(_frame(opcode, payload))
            writer.flush()
    except (OSError, struct.error):
        return


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (a server's)."""
    length = len(payload)
    if length < 126:
        head = bytes((0x80 | opcode, length))
    elif length < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + struct.pack("!H", length)
    else:
        head = bytes((0x80 | opcode, 127)) + struct.pack("!Q", length)
    return head + payload


def websocket_round_trip(url: str, origin: str) -> list[str]:
    """Open a websocket at `url`, send a text and a binary message (upstream's test's), and
    say what did not come back unchanged (empty: both did)."""

    async def run() -> list[str]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.ws_connect(url, origin=origin) as ws:
            problems = []
            text, binary = "Websocket Support!", bytes([1, 2, 3, 4, 5, 6, 7])
            await ws.send_str(text)
            got = await ws.receive()
            if got.type != aiohttp.WSMsgType.TEXT or got.data != text:
                problems.append(f"text reply {got.type.name} {got.data!r}, expected {text!r}")
            await ws.send_bytes(binary)
            got = await ws.receive()
            if got.type != aiohttp.WSMsgType.BINARY or got.data != binary:
                problems.append(f"binary reply {got.type.name} {got.data!r}, "
                                f"expected {binary!r}")
            return problems

    try:
        return asyncio.run(run())
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        return [f"websocket {url}: {error!r}"]
