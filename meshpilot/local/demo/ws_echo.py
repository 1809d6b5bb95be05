"""A tiny websocket echo upstream (aiohttp) for demos and tests.

`GET /ws` upgrades to a websocket on which every text message comes back as `NAME: message`
(binary messages come back unchanged), so a test can tell the upstream answered through the
proxy. Any other path answers 200 with the name. Serves on its own event loop in a daemon thread.

    python -m meshpilot.local.demo.ws_echo --name ws1 --port 9090
"""

from __future__ import annotations

import contextlib

from aiohttp import WSMsgType, web

from meshpilot.local.demo.runner import run_until_interrupted
from meshpilot.local.demo.server import DemoServer, LoopThread

__all__ = ["WsEchoServer", "main"]

WS_PATH = "/ws"


class WsEchoServer(DemoServer):
    """The websocket echo on (host, port); port 0 picks a free one."""

    kind = "websocket echo"

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(name, host, port)
        self._loop: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._start_timeout = 10.0

    def start(self, timeout: float = 10.0) -> int:
        """As DemoServer.start, waiting at most `timeout` seconds for the site to listen."""
        self._start_timeout = timeout
        return super().start()

    def _serve(self) -> int:
        loop = LoopThread(f"ws-echo-{self.name}")
        loop.start()
        try:
            port = loop.run(self._listen(), timeout=self._start_timeout)
        except BaseException as error:
            loop.stop()
            raise RuntimeError(f"websocket echo {self.name} did not start: {error!r}") from error
        self._loop = loop
        return port

    async def _listen(self) -> int:
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
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

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

    def _shutdown(self) -> None:
        loop, runner = self._loop, self._runner
        self._loop = self._runner = None
        if loop is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):  # stopping anyway
                loop.run(runner.cleanup(), timeout=5)
        loop.stop()


def main(argv: list[str] | None = None) -> None:
    """Run one WsEchoServer in the foreground until interrupted."""
    run_until_interrupted(
        argv, description="meshpilot demo websocket echo upstream",
        build=WsEchoServer,
        banner=lambda name, host, port: f"websocket echo {name} on ws://{host}:{port}{WS_PATH}")


if __name__ == "__main__":
    main()
