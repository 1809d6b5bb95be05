"""A real headless browser for the tests: Debian's `chromium`, driven over the Chrome DevTools
protocol (JSON messages on a websocket; aiohttp's client speaks it, nothing is downloaded).

    with Chromium(work) as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:PORT/dashboard")
        page.wait_for("document.querySelector('#login').hidden === false")

Chromium is found as $MESHPILOT_CHROMIUM, else `chromium` or `chromium-browser` on PATH;
`chromium_or_skip()` skips a test with the reason when it is absent, except under CI
(CI=true), where `make test` installs it (scripts/chromium.sh) and its absence fails.
It runs on a fresh profile in the test's folder, on a port the OS picks (read from the
profile's DevToolsActivePort), bound to 127.0.0.1, with no network service of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest


def chromium_binary() -> str | None:
    explicit = os.environ.get("MESHPILOT_CHROMIUM")
    if explicit:
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> str:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium on PATH (scripts/chromium.sh installs it)")
        print("no chromium on PATH (apt-get install chromium): skipping the browser test")
        pytest.skip("no chromium on PATH (apt-get install chromium, or MESHPILOT_CHROMIUM)")
    return binary


class DevToolsError(AssertionError):
    pass


class Page:
    """One tab, over its own DevTools websocket. Calls are synchronous: each runs the
    session's event loop until its answer arrives (events in between are dropped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socket: aiohttp.ClientWebSocketResponse):
        self._loop = loop
        self._socket = socket
        self._ids = itertools.count(1)
        # Events seen while waiting for answers (Runtime.exceptionThrown, Log.entryAdded, ...)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def errors(self) -> list[str]:
        """The page's uncaught exceptions and logged errors (a CSP refusal is one), so far."""
        self.evaluate("0")  # take in what arrived since the last call
        found = []
        for method, params in self.events:
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(details.get("exception", {}).get("description")
                             or details.get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._send(method, params, timeout))

    async def _send(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        ident = next(self._ids)
        await self._socket.send_str(json.dumps({"id": ident, "method": method,
                                                "params": params}))
        async with asyncio.timeout(timeout):
            while True:
                message = await self._socket.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise DevToolsError(f"DevTools socket: {message.type} {message.data!r}")
                data = json.loads(message.data)
                if "method" in data and len(self.events) < 10_000:
                    self.events.append((data["method"], data.get("params", {})))
                if data.get("id") != ident:
                    continue  # an event, or an answer we no longer wait for
                if "error" in data:
                    raise DevToolsError(f"{method}: {data['error']}")
                return data.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DevToolsError(f"{expression}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 20.0, what: str = "") -> Any:
        """The expression's first truthy value, polled; a readable failure after `timeout`."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.evaluate(expression)
            except DevToolsError as e:  # a page mid-navigation, say
                last = e
            if last and not isinstance(last, DevToolsError):
                return last
            if time.monotonic() > deadline:
                body = self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(f"timed out waiting for {what or expression} (last: "
                                     f"{last!r}); the page says:\n{body}")
            time.sleep(0.1)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && "
                      "document.readyState === 'complete'", what=f"{url} to load")

    def text(self, selector: str) -> str:
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || "
                             "{innerText: ''}).innerText")


class Chromium:
    def __init__(self, work: Path, binary: str | None = None):
        self.binary = binary or chromium_or_skip()
        self.work = work
        self.profile = work / "chromium-profile"
        self.log_path = work / "chromium.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--headless=new", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu",
                "--disable-extensions", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-default-apps",
                "--disable-dev-shm-usage", "--password-store=basic", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.port = int(active.read_text().splitlines()[0])
                break
            except (OSError, IndexError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"chromium did not open DevTools:\n{self.log_tail()}")
            time.sleep(0.1)
        self._session = self._loop.run_until_complete(self._make_session())

    async def _make_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def page(self) -> Page:
        """A new tab on about:blank."""
        return self._loop.run_until_complete(self._page())

    async def _page(self) -> Page:
        assert self._session is not None
        base = f"http://127.0.0.1:{self.port}"
        async with self._session.put(f"{base}/json/new?about:blank") as r:
            assert r.status == 200, await r.text()
            target = await r.json()
        socket = await self._session.ws_connect(target["webSocketDebuggerUrl"],
                                                max_msg_size=64 * 1024 * 1024)
        self._sockets.append(socket)
        page = Page(self._loop, socket)
        await page._send("Page.enable", {}, 30)
        await page._send("Runtime.enable", {}, 30)
        await page._send("Log.enable", {}, 30)
        return page

    def stop(self) -> None:
        async def close() -> None:
            for socket in self._sockets:
                await socket.close()
            if self._session is not None:
                await self._session.close()

        if not self._loop.is_closed():
            self._loop.run_until_complete(close())
            self._loop.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@contextmanager
def chromium(work: Path) -> Iterator[Chromium]:
    with Chromium(work) as browser:
        yield browser
