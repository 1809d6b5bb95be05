"""Watching the policy folder: file events in, reloads out, an isolated save at once.

A save that completes a file (a write closed, a file renamed into place) while the folder has
been quiet is applied at once: the leading edge. Whatever follows within `quiet` seconds is a
burst (an editor's save in several steps, `git checkout`, a sync tool writing many files),
applied once after `quiet` seconds without events, or at most `max_wait` after the first event
of the burst, so a folder that never stops changing is still applied (Istio's defaults: 100 ms,
10 s). Events that do not complete a file (created, modified, deleted, renamed away, an empty
file closed) never fire at once: a truncated file is not read before its writer closes it, and a
file moved away or deleted may be on its way back.

A leading-edge reload is tentative: if it is refused and more events follow, the burst's end is
what counts, and the refusal is dropped (the controller holds it, `Controller.settle`); if the
folder stays quiet for `quiet` after it, the refusal is reported as any other.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("meshpilot.runtime.watch")


class Debouncer:
    """Calls `fire(leading)` on the event loop: at once (`leading` True) for an isolated
    completing event, else once a burst of `poke()`s has settled; `settled()` when the
    `quiet` period after a leading fire passed without events (its outcome is final).

    `leading=False` turns the leading edge off: every burst waits for its quiet period.
    """

    def __init__(self, fire: Callable[[bool], None], *, quiet: float, max_wait: float,
                 loop: asyncio.AbstractEventLoop, leading: bool = True,
                 settled: Callable[[], None] | None = None):
        self._fire = fire
        self._settled = settled
        self.quiet = quiet
        self.max_wait = max_wait
        self.leading = leading
        self._loop = loop
        self._first: float | None = None  # first event of the pending (trailing) burst
        self._timer: asyncio.TimerHandle | None = None
        self._last_complete: float | None = None  # newest completing event, or leading fire
        self._window: asyncio.TimerHandle | None = None  # the quiet period after a leading fire
        self._poked_in_window = False
        # The loop time of the first event of the burst that fired last (convergence).
        self.fired_burst_started: float | None = None
        self.leading_fires = 0
        self.trailing_fires = 0

    def poke(self, complete: bool = False) -> None:
        """An event. `complete`: it finished writing a policy file (closed after a write, or
        renamed into place), so the file can be read whole now."""
        now = self._loop.time()
        if self._window is not None:
            self._poked_in_window = True
        if complete and self._leading_now(now):
            self._fire_leading(now)
            return
        if complete:
            self._last_complete = now
        if self._first is None:
            self._first = now
        if self._timer is not None:
            self._timer.cancel()
        deadline = min(now + self.quiet, self._first + self.max_wait)
        self._timer = self._loop.call_at(deadline, self._run)

    def _leading_now(self, now: float) -> bool:
        """Quiet enough for the leading edge: no completing event (nor leading fire) in the
        last `quiet` seconds, and any pending burst began within them (the same save's
        earlier steps: created, truncated, written), not long ago (a burst under way)."""
        if not self.leading:
            return False
        if self._last_complete is not None and now - self._last_complete < self.quiet:
            return False
        return self._first is None or now - self._first < self.quiet

    def _fire_leading(self, now: float) -> None:
        self.fired_burst_started = self._first if self._first is not None else now
        self._first = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_complete = now
        if self._window is not None:
            self._window.cancel()
        self._poked_in_window = False
        self._window = self._loop.call_at(now + self.quiet, self._window_end)
        self.leading_fires += 1
        self._fire(True)

    def _window_end(self) -> None:
        self._window = None
        if self._poked_in_window or self._first is not None:
            return  # a burst followed: its own fire supersedes the leading one
        if self._settled is not None:
            self._settled()

    def _run(self) -> None:
        self.fired_burst_started = self._first
        self._first = None
        self._timer = None
        self.trailing_fires += 1
        self._fire(False)

    def cancel(self) -> None:
        for timer in (self._timer, self._window):
            if timer is not None:
                timer.cancel()
        self._timer = self._window = None
        self._first = None


def is_policy_file(path: str) -> bool:
    name = Path(path).name
    if name.startswith(".") or name.endswith("~") or name.endswith(".swp"):
        return False
    return name.endswith((".yaml", ".yml"))


def completes_a_file(event: FileSystemEvent) -> bool:
    """The event leaves a policy file whole: a write closed (inotify's IN_CLOSE_WRITE), or a
    file renamed into place (write-aside-and-rename). Creating, truncating, writing, deleting
    or renaming a file away do not: more steps may follow."""
    if event.is_directory:
        return False
    if event.event_type == "closed":
        path = str(event.src_path)
    elif event.event_type == "moved":
        path = str(getattr(event, "dest_path", "") or "")
    else:
        return False
    return is_policy_file(path) and _not_empty(path)


def _not_empty(path: str) -> bool:
    """An empty file is what a truncate-then-close leaves before the content is written in a
    second step: it waits for the quiet period like any other step of a save."""
    try:
        return os.stat(path).st_size > 0
    except OSError:
        return False


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[bool], None]):
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            # watchdog adds one for the parent folder after each file's own event: noise, which
            # would make every isolated save look like the start of a burst.
            return
        paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
        # A directory event may stand for many files (a folder renamed into place).
        if event.is_directory or any(is_policy_file(p) for p in paths if p):
            self._notify(completes_a_file(event))


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

    def _poke(self, complete: bool = False) -> None:
        self._loop.call_soon_threadsafe(self._debouncer.poke, complete)

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
        handler = _Handler(self._poke)
        self._observer.schedule(handler, str(self._path), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        log.info("watching %s", self._path)

    def stop(self) -> None:
        self._debouncer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)
