"""Watching the policy folder: file events in, one debounced reload out.

Bursts (an editor's save-by-rename, `git checkout`, a sync tool writing many files) become one
reload after `quiet` seconds without events, or at most `max_wait` after the first event of the
burst, so a folder that never stops changing is still applied (Istio's defaults: 100 ms, 10 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("meshpilot.watch")


class Debouncer:
    """Calls `fire()` on the event loop once a burst of `poke()`s has settled."""

    def __init__(self, fire: Callable[[], None], *, quiet: float, max_wait: float,
                 loop: asyncio.AbstractEventLoop):
        self._fire = fire
        self.quiet = quiet
        self.max_wait = max_wait
        self._loop = loop
        self._first: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        now = self._loop.time()
        if self._first is None:
            self._first = now
        if self._timer is not None:
            self._timer.cancel()
        deadline = min(now + self.quiet, self._first + self.max_wait)
        self._timer = self._loop.call_at(deadline, self._run)

    def _run(self) -> None:
        self._first = None
        self._timer = None
        self._fire()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._first = None


def is_policy_file(path: str) -> bool:
    name = Path(path).name
    if name.startswith(".") or name.endswith("~") or name.endswith(".swp"):
        return False
    return name.endswith((".yaml", ".yml"))


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[], None]):
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        # A directory event may stand for many files (a folder renamed into place).
        if event.is_directory or any(is_policy_file(p) for p in paths if p):
            self._notify()


class PolicyWatcher:
    """Watch a folder (or one file's folder) recursively; poke a Debouncer from the loop."""

    def __init__(self, path: Path, debouncer: Debouncer, loop: asyncio.AbstractEventLoop):
        self._path = path if path.is_dir() else path.parent
        self._debouncer = debouncer
        self._loop = loop
        self._observer = Observer()

    def start(self) -> None:
        handler = _Handler(lambda: self._loop.call_soon_threadsafe(self._debouncer.poke))
        self._observer.schedule(handler, str(self._path), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        log.info("watching %s", self._path)

    def stop(self) -> None:
        self._debouncer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)
