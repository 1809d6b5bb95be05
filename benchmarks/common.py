"""Shared helpers: the cross-process clock, /proc readings, saving files, bounded waits, and
starting/stopping helper processes.

Clock: every timestamp that is compared across processes is `now_ns()`, CLOCK_MONOTONIC, which on
Linux is one clock for the whole machine (unlike `time.perf_counter`, whose origin is arbitrary per
process). `time.time()` values recorded by meshpilot itself (for example `acked_at`) are turned
into this clock with `realtime_offset_ns()` sampled in the same process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds: comparable between processes on one Linux machine."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def realtime_offset_ns() -> int:
    """time.time_ns() - now_ns(), to map wall-clock stamps onto `now_ns()`."""
    return time.time_ns() - now_ns()


def ms(ns: float) -> float:
    return ns / 1e6


# ----- /proc --------------------------------------------------------------------------------------


def proc_rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default)."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def proc_peak_rss_bytes(pid: int | None = None) -> int:
    """VmHWM: the highest resident set size the process has had."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" closing comm: state is fields[0], so utime (14) and stime (15) are 11, 12.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu_seconds() -> float:
    """This process's CPU time (every thread) with sub-tick resolution."""
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


# ----- files --------------------------------------------------------------------------------------


def save_aside(path: Path, text: str, before_replace: Callable[[], None] | None = None) -> None:
    """Replace a file the way careful editors do: write a hidden temp file, then rename it into
    place. `before_replace` runs just before `os.replace` (the benchmarks take t0 there)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


# ----- waiting -----------------------------------------------------------------------------------


def wait_for(check: Callable[[], T], *, timeout: float, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (returned); RuntimeError on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as e:  # not yet
            last = e
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# ----- helper processes -------------------------------------------------------------------------


def python_module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def child_env() -> dict[str, str]:
    """The environment for helper processes: this checkout importable, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0,
                 sig: int = signal.SIGTERM) -> None:
    """Stop one process we started: `sig`, then SIGKILL after `timeout`. Idempotent."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=timeout)


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class JsonLineProcess:
    """A helper process spoken to with one JSON object per line on stdin/stdout.

    stderr goes to a log file. Every `receive` is bounded by a timeout; the process is stopped
    (by its own pid) in `close()`.
    """

    def __init__(self, cmd: Sequence[str], log_path: Path, *, name: str):
        self.name = name
        self.log_path = log_path
        self._buffer = b""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, env=child_env(), cwd=str(ROOT), bufsize=0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **message: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next line from the helper, parsed; RuntimeError if none within `timeout`."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise RuntimeError(f"{self.name}: no answer within {timeout:.0f}s; log tail:\n"
                                   f"{tail(self.log_path)}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{self.name} exited ({self.proc.poll()}); log tail:\n"
                                   f"{tail(self.log_path)}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}\nlog tail:\n"
                               f"{tail(self.log_path)}")
        return answer

    def call(self, wait: float, /, **message: Any) -> dict[str, Any]:
        """Send `message`; its answer within `wait` seconds."""
        self.send(**message)
        return self.receive(wait)

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send(cmd="quit")
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


def control_channel(loop: Any) -> tuple[Any, Callable[[dict[str, Any]], None]]:
    """A benchmark child's control channel: JSON lines from the parent on stdin become items of
    the returned asyncio queue (None at EOF); `answer(dict)` writes one JSON line to stdout."""
    import asyncio
    import json
    import sys
    import threading

    commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, name="control", daemon=True).start()

    def answer(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    return commands, answer
