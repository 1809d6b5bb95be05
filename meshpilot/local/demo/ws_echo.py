"""A tiny websocket echo upstream (aiohttp) for demos and tests.

`GET /ws` upgrades to a websocket on which every text message comes back as `NAME: message`
(binary messages come back unchanged), so a test can tell the upstream answered through the
proxy. Any other path answers 200 with the name. Serves on its own event loop in a daemon thread.

    python -m meshpilot.local.demo.ws_echo --name ws1 --port 9090
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from aiohttp import WSMsgType, web

from meshpilot.local.demo.runner import run_until_interrupted

__all__ = ["WsEchoServer", "main"]

WS_PATH = "/ws"



class WsEchoServer:
    """The websocket echo on (host, port); port 0 picks a free one."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> int:
        if self._thread is not None:
            raise RuntimeError(f"websocket echo {self.name} is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:  # reported to start()
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"ws-echo-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RuntimeError(f"websocket echo {self.name} did not start: {failure}")
        assert self._port is not None
        return self._port

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._plain)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None
        self._port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _plain(self, request: web.Request) -> web.Response:
        return web.json_response({"backend": self.name, "path": request.path})

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}: {message.data}")
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    @property
    def port(self) -> int:
        return self._port if self._port is not None else self._requested_port

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        self._loop = self._thread = self._runner = None
        if loop is None or thread is None:
            return
        if runner is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            with contextlib.suppress(Exception):  # stopping anyway
                future.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run one WsEchoServer in the foreground until interrupted."""
    run_until_interrupted(
        argv, description="meshpilot demo websocket echo upstream",
        build=lambda name, host, port: WsEchoServer(name, host=host, port=port),
        banner=lambda name, host, port: f"websocket echo {name} on ws://{host}:{port}{WS_PATH}")


if __name__ == "__main__":
    main()
