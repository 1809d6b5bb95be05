"""What every demo upstream shares: a name, an address (port 0 picks a free one), `start()`
returning the bound port, an idempotent `stop()`, and use as a context manager; and an asyncio
event loop in a daemon thread, for upstreams written as coroutines (and the tests' own)."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

__all__ = ["DemoServer", "LoopThread"]

T = TypeVar("T")


class DemoServer(ABC):
    """A demo upstream on (host, port), serving in the background once started.

    Subclasses bind and serve in `_serve()` (returning the bound port) and release everything
    in `_shutdown()`; this class keeps the bookkeeping every upstream needs the same way: one
    start at a time, stop only what runs, and the port to report.
    """

    kind: ClassVar[str] = "demo server"  # how messages name this kind of upstream

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self._requested_port = port
        self._bound_port: int | None = None

    @abstractmethod
    def _serve(self) -> int:
        """Bind (host, requested port), start serving in the background, return the bound port."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Stop serving and release the port (called once per successful `_serve`)."""

    @property
    def running(self) -> bool:
        return self._bound_port is not None

    def start(self) -> int:
        """Bind, start serving in the background and return the bound port."""
        if self.running:
            raise RuntimeError(f"{self.kind} {self.name} is already running")
        self._bound_port = self._serve()
        return self._bound_port

    def stop(self) -> None:
        """Stop serving and release the port. Idempotent, and harmless before `start()`."""
        if not self.running:
            return
        self._bound_port = None
        self._shutdown()

    @property
    def port(self) -> int:
        """The bound port while running, else the port asked for."""
        return self._bound_port if self._bound_port is not None else self._requested_port

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LoopThread:
    """An asyncio event loop running forever in a daemon thread of its own.

    Servers written as coroutines (aiohttp, grpc.aio, asyncio.start_server) live on it while the
    caller stays synchronous: `run()` hands a coroutine to the loop and waits, bounded, for its
    result. `stop()` is idempotent and harmless before `start()`.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_forever, name=name, daemon=True)

    def _run_forever(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the loop; its result, or its exception (TimeoutError after
        `timeout` seconds)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.ident is None:  # never started: nothing runs, only the loop to close
            self.loop.close()
            return
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():  # a loop still running cannot be closed
            self.loop.close()
