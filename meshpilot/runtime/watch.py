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

log = logging.getLogger("meshpilot.runtime.watch")


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
        # The loop time of the first event of the burst that fired last (convergence).
        self.fired_burst_started: float | None = None

    def poke(self) -> None:
        now = self._loop.time()
        if self._first is None:
            self._first = now
        if self._timer is not None:
            self._timer.cancel()
        deadline = min(now + self.quiet, self._first + self.max_wait)
        self._timer = self._loop.call_at(deadline, self._run)

    def _run(self) -> None:
        self.fired_burst_started = self._first
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


class _FilesHandler(FileSystemEventHandler):
    """Events in a folder holding files the policy names (certificates and keys, outside the
    policy folder or not): only those files count, and Kubernetes' atomic swap of a mounted
    Secret (`..data` renamed into place, the files being links through it)."""

    def __init__(self, files: Callable[[], frozenset[str]], notify: Callable[[], None]):
        self._files = files
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        watched = self._files()
        for path in (str(event.src_path), str(getattr(event, "dest_path", "") or "")):
            if path and (path in watched or Path(path).name.startswith("..")):
                self._notify()
                return


class PolicyWatcher:
    """Watch a folder (or one file's folder) recursively; poke a Debouncer from the loop.
    `watch_files` adds files named by the policy (TLS certificates and keys) wherever they are."""

    def __init__(self, path: Path, debouncer: Debouncer, loop: asyncio.AbstractEventLoop):
        self._path = path if path.is_dir() else path.parent
        self._debouncer = debouncer
        self._loop = loop
        self._observer = Observer()
        self._files: frozenset[str] = frozenset()
        self._folders: set[str] = set()
        self._files_handler = _FilesHandler(lambda: self._files, self._poke)

    def _poke(self) -> None:
        self._loop.call_soon_threadsafe(self._debouncer.poke)

    def watch_files(self, files: frozenset[str]) -> None:
        """Also reload when one of `files` (absolute paths) is written, replaced or removed.
        A folder that does not exist yet is tried again at the next call (the next reload)."""
        self._files = frozenset(files)
        for folder in sorted({str(Path(file).parent) for file in self._files} - self._folders):
            try:
                self._observer.schedule(self._files_handler, folder, recursive=False)
            except OSError as error:
                log.warning("cannot watch %s: %s", folder, error.strerror or error)
                continue
            self._folders.add(folder)
            log.info("watching TLS files in %s", folder)

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
