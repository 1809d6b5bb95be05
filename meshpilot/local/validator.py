"""Envoy itself as the pre-push check: resources checked with `envoy --mode validate`.

`EnvoyValidator.check(resources)` answers, for each resource, whether this Envoy build accepts
it, with Envoy's own message when it does not. It is what `runtime/prepush.py` calls before a
new snapshot is served (the runtime only knows the `ResourceCheck` protocol; this module is
handed to it by the CLI, since running Envoy is this wing's job).

How a resource is checked: each becomes part of a static bootstrap (a Cluster as it is, a
ClusterLoadAssignment as the STATIC cluster it fills, a Listener as it is, a RouteConfiguration
inline in a listener of its own, a Secret as a static secret), which `envoy --mode validate`
loads fully (addresses, regexes, filter configs, certificates) without serving or contacting
xDS. Cross-references (a route naming a cluster) are meshpilot's own checks, not repeated here.

Cost: an Envoy start is ~0.1 s whatever it checks, so resources are checked together, in at
most `workers` bootstraps run side by side. Envoy stops at the first thing it refuses and its
message does not name the resource, so a refused bootstrap is split in halves, checked again,
until each refusal is one resource: one bad resource among N costs about 2*log2(N) more starts.
Every answer is cached by (type URL, content version): a resource already seen, in any view,
is never checked twice, so an edit that changes one route costs one small check.

Warm starts: most of an Envoy start (exec, static initialization: ~0.1 s idle, ~0.4 s on a
loaded machine) happens before it reads its config, so `workers` validate runs are started
ahead, each reading its bootstrap from a FIFO in a private temporary folder (0700) that this
process holds open (so that a run never outlives this process: when it goes, the run reads an
empty config and exits, or, if it had not opened the FIFO yet, is killed by its parent-death
signal). A check writes its bootstrap into a waiting run's FIFO and waits only
for the validation itself (~10 ms), and a new run is started for the next check.

Secrets go only through those FIFOs (or a 0600 file in such a folder); nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from google.protobuf import json_format

from meshpilot.base import types
from meshpilot.local.envoy_process import EnvoyError, find_envoy
from meshpilot.xds.render import message_of
from meshpilot.xds.resources import Resource

__all__ = ["EnvoyValidator", "Key"]

Key = tuple[str, str]  # (type URL, content version): what an answer is cached by

CHECKED_TYPES = frozenset({types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE,
                           types.SECRET})
# The ADS cluster EDS clusters and RDS listeners name; never contacted by validation. "|" is
# never in a policy name, so it cannot clash with a checked cluster.
_XDS_CLUSTER = "meshpilot|validate-xds"
# Route configurations are checked inline in a listener of their own, on this address (a port
# each); validation binds nothing.
_ROUTE_HOST = "127.0.0.254"
_HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager")
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Envoy's one line when it refuses a bootstrap: "... error initializing configuration 'PATH': M"
_REFUSAL = re.compile(r"error initializing configuration '[^']*': (.*)", re.DOTALL)
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\[\d+\]\[\w+\]\[\w+\] \[[^\]]*\] ", re.MULTILINE)
_VERSION = re.compile(r"/(\d+\.\d+\.\d+)/")


class EnvoyValidator:
    """A pool of `envoy --mode validate` runs with a cache of answers. Thread-safe."""

    def __init__(self, envoy_path: str | None = None, *, workers: int = 2,
                 batch_limit: int = 500, timeout: float = 60.0, cache_size: int = 200_000):
        self.envoy_path = find_envoy(envoy_path)
        self.workers = max(1, workers)
        self.batch_limit = max(1, batch_limit)
        self.timeout = timeout
        self.cache_size = cache_size
        self._answers: OrderedDict[Key, str | None] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="envoy-validate")
        self.runs = 0  # Envoy starts so far (benchmarks, tests: a cached answer costs none)
        self.envoy_version = self._version()
        self._closed = False
        # Held while a run joins the queue or the queue is emptied by `close`, so that a check
        # finishing during `close` cannot leave a waiting run behind.
        self._warm_lock = threading.Lock()
        self._warm: queue.SimpleQueue[_WarmRun] = queue.SimpleQueue()
        for _ in range(self.workers):
            self._warm.put(self._start())

    def _start(self) -> _WarmRun:
        return _WarmRun(self.envoy_path)

    def _take(self) -> _WarmRun:
        """A run waiting for its bootstrap (one started now if none waits, or if the one that
        waited is gone: killed, out of memory)."""
        try:
            run = self._warm.get_nowait()
        except queue.Empty:
            return self._start()
        if run.proc is not None and run.proc.poll() is not None:
            run.kill()
            return self._start()
        return run

    def _replenish(self) -> None:
        """Start a run for the next check, after this one: started during a check, its own
        start would compete with the validation for the CPU."""
        with self._warm_lock:
            if not self._closed:
                self._warm.put(self._start())

    def close(self) -> None:
        """Stop the waiting runs and the pool (idempotent)."""
        with self._warm_lock:
            self._closed = True
            while True:
                try:
                    self._warm.get_nowait().kill()
                except queue.Empty:
                    break
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _version(self) -> str | None:
        try:
            out = subprocess.run([self.envoy_path, "--version"], capture_output=True, text=True,
                                 timeout=self.timeout, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EnvoyError(f"cannot run {self.envoy_path} --version: {e}") from e
        found = _VERSION.search(out.stdout + out.stderr)
        return found.group(1) if found else None

    # ---- the check --------------------------------------------------------------------------

    def check(self, resources: Iterable[Resource]) -> dict[Key, str]:
        """Envoy's message for every resource it refuses, by (type URL, version); a resource
        not in the answer is accepted (or of a type Envoy's bootstrap cannot hold: unchecked).
        EnvoyError if Envoy cannot be run at all."""
        unique: dict[Key, Resource] = {}
        for resource in resources:
            if resource.type_url in CHECKED_TYPES:
                unique.setdefault((resource.type_url, resource.version), resource)
        refused: dict[Key, str] = {}
        todo: list[Resource] = []
        with self._lock:
            for key, resource in unique.items():
                if key in self._answers:
                    self._answers.move_to_end(key)
                    answer = self._answers[key]
                    if answer is not None:
                        refused[key] = answer
                else:
                    todo.append(resource)
        if not todo:
            return refused
        answers = self._run(todo)
        with self._lock:
            for key, answer in answers.items():
                self._answers[key] = answer
                if answer is not None:
                    refused[key] = answer
            while len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
        return refused

    def _run(self, resources: list[Resource]) -> dict[Key, str | None]:
        """Check `resources` (none cached): batches side by side, refused batches halved."""
        answers: dict[Key, str | None] = {}
        pending = _batches(resources, self.batch_limit, self.workers)
        while pending:
            results = list(self._pool.map(self._validate, pending))
            split: list[list[Resource]] = []
            for batch, message in zip(pending, results, strict=True):
                if message is None:
                    answers.update(((r.type_url, r.version), None) for r in batch)
                elif len(batch) == 1:
                    answers[(batch[0].type_url, batch[0].version)] = message
                else:
                    half = len(batch) // 2
                    split += [batch[:half], batch[half:]]
            pending = split
        return answers

    def _validate(self, batch: Sequence[Resource]) -> str | None:
        """None if Envoy accepts the bootstrap holding `batch`, else its message."""
        data = json.dumps(bootstrap_of(batch)).encode()
        try:
            returncode, output = self._take().run(data, self.timeout)
        finally:
            self._replenish()
        with self._lock:
            self.runs += 1
        if returncode == 0:
            return None
        if returncode < 0:  # killed by a signal: no answer, not a refusal
            raise EnvoyError(f"envoy --mode validate was killed (signal {-returncode})")
        return refusal_message(output)


# Warm runs need Linux's FIFO semantics and /proc; elsewhere each check starts its own run.
_WARM = os.path.isdir("/proc/self/fd") and hasattr(os, "mkfifo")
# A warm run whose parent dies before the run opened its FIFO would block in open() for ever
# (no writer is left to wake it), so it is started with a parent-death signal: util-linux's
# setpriv sets it and execs Envoy (the same pid), which keeps preexec_fn, unsafe in a process
# with threads, out of it. The signal follows the thread that started the run: a pool thread
# that ends takes its waiting run along, and `_take` starts another. A parent that died before
# setpriv set the signal would never send it: between the two, a shell checks that its parent
# is still the process that started it (else it was orphaned: it exits), then execs Envoy.
_SETPRIV = shutil.which("setpriv") if _WARM else None
_SH = shutil.which("sh") if _SETPRIV else None
_STILL_OURS = 'test "$PPID" = "$0" || exit 70; exec "$@"'


class _WarmRun:
    """One `envoy --mode validate` started ahead, blocked reading its bootstrap from a FIFO
    (without /proc: started by `run`, from a 0600 file)."""

    def __init__(self, envoy_path: str):
        self.envoy_path = envoy_path
        self.folder = tempfile.mkdtemp(prefix="meshpilot-validate-")  # 0700
        self.path = os.path.join(self.folder, "bootstrap.json")
        self.fd: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if _WARM:
            os.mkfifo(self.path, 0o600)
            # Held open (for reading and writing, which never blocks on Linux): Envoy's open
            # succeeds at once, and its read ends when this end is closed, after the
            # bootstrap or when this process exits.
            self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            self.proc = self._popen()

    def _popen(self) -> subprocess.Popen[bytes]:
        argv = [self.envoy_path, "--mode", "validate", "-c", self.path, "--log-level",
                "critical", "--disable-hot-restart"]
        if self.fd is not None and _SETPRIV:
            checked = [_SH, "-c", _STILL_OURS, str(os.getpid())] if _SH else []
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *checked, *argv]
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as e:
            self._clean()
            raise EnvoyError(f"cannot run {self.envoy_path}: {e}") from e

    def run(self, data: bytes, timeout: float) -> tuple[int, str]:
        """Hand it `data` as its bootstrap; (exit status, its output)."""
        if self.proc is None:  # not warm: a private file, then the run
            with open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
                      "wb") as out:
                out.write(data)
            self.proc = self._popen()
        return self._finish(data if self.fd is not None else b"", timeout)

    def _finish(self, data: bytes, timeout: float) -> tuple[int, str]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        try:
            pending = memoryview(data)
            while pending and self.fd is not None:
                try:
                    pending = pending[os.write(self.fd, pending):]
                except BlockingIOError:  # the FIFO is full until Envoy reads
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.001)
            # Closing this end before Envoy opened its own would drop what the FIFO holds.
            while self.fd is not None and not self._opened() and self.proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
            self._close_fd()
            try:
                out, err = self.proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as e:
                raise EnvoyError(f"envoy --mode validate timed out after {timeout}s") from e
            return self.proc.returncode, (err + out).decode(errors="replace")
        finally:
            self.kill()

    def _opened(self) -> bool:
        """Whether Envoy has the FIFO open (its /proc fd links)."""
        assert self.proc is not None
        folder = f"/proc/{self.proc.pid}/fd"
        try:
            for fd in os.listdir(folder):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{folder}/{fd}") == self.path:
                        return True
        except OSError:
            return False
        return False

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                self.proc.communicate(timeout=5)
        self._clean()

    def _clean(self) -> None:
        self._close_fd()
        shutil.rmtree(self.folder, ignore_errors=True)


def refusal_message(output: str) -> str:
    """Envoy's reason, without its log prefix and the temporary file's path."""
    text = _LOG_PREFIX.sub("", output.strip())
    found = _REFUSAL.search(text)
    message = (found.group(1) if found else text).strip()
    return message or "refused by envoy --mode validate (no message)"


def _batches(resources: list[Resource], limit: int, workers: int) -> list[list[Resource]]:
    """Resources in bootstraps Envoy can load together: at most `limit` each, spread over
    `workers`, no two of a type with one name, no two listeners on one address."""
    count = max(workers if len(resources) >= 2 * workers else 1,
                -(-len(resources) // limit))
    size = -(-len(resources) // count)
    batches: list[list[Resource]] = []
    taken: list[set[Any]] = []
    for resource in resources:
        keys = {(resource.type_url, resource.name)}
        if resource.type_url == types.LISTENER:
            keys.add(("address", _address_key(resource)))
        for batch, used in zip(batches, taken, strict=True):
            if len(batch) < size and not keys & used:
                batch.append(resource)
                used |= keys
                break
        else:
            batches.append([resource])
            taken.append(keys)
    return batches


def _address_key(resource: Resource) -> str:
    return message_of(resource).address.SerializeToString(deterministic=True).hex()  # type: ignore[attr-defined]


def _as_dict(resource: Resource) -> dict[str, Any]:
    return json_format.MessageToDict(message_of(resource), preserving_proto_field_name=True)


def bootstrap_of(batch: Sequence[Resource]) -> dict[str, Any]:
    """A static bootstrap holding `batch` so that Envoy checks each resource fully."""
    clusters: list[dict[str, Any]] = []
    listeners: list[dict[str, Any]] = []
    secrets: list[dict[str, Any]] = []
    routes = 0
    for resource in batch:
        data = _as_dict(resource)
        if resource.type_url == types.CLUSTER:
            clusters.append(data)
        elif resource.type_url == types.ENDPOINT:
            clusters.append({"name": f"{resource.name}|endpoints", "type": "STATIC",
                             "load_assignment": data})
        elif resource.type_url == types.LISTENER:
            listeners.append(_without_cluster_checks(data))
        elif resource.type_url == types.ROUTE:
            routes += 1
            data["validate_clusters"] = False  # which clusters exist is not this check's job
            listeners.append(_route_listener(resource.name, routes, data))
        elif resource.type_url == types.SECRET:
            secrets.append(data)
    # The clusters the resources' filters and sources name that the batch does not define (an
    # xDS config source of its own names the management server's cluster of the Envoy's
    # bootstrap; a tracer names its collector's, which Envoy looks up when it loads the
    # listener): each becomes a static stand-in, as the view's own cluster is checked alone.
    defined = {c.get("name") for c in clusters}
    for name in [*sorted(_named_clusters([clusters, listeners, secrets]) - defined),
                 _XDS_CLUSTER]:
        clusters.append(_grpc_stand_in(name))
    static: dict[str, Any] = {"clusters": clusters, "listeners": listeners}
    if secrets:
        static["secrets"] = secrets
    return {
        "node": {"id": "meshpilot-validate", "cluster": "meshpilot-validate"},
        "dynamic_resources": {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": _XDS_CLUSTER}}]}},
        "static_resources": static,
    }


# Where a resource names a cluster that Envoy looks up when it loads the resource: a gRPC
# service (`envoy_grpc.cluster_name`), a tracer's collector (`collector_cluster`: Zipkin,
# Datadog), an HTTP service's URI (`http_uri.cluster`, `server_uri.cluster`: JWKS, ext_authz).
_URI_FIELDS = ("http_uri", "server_uri")


def _named_clusters(value: Any) -> set[str]:
    """Every cluster a resource (as JSON) names in one of the fields above."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            grpc = item.get("envoy_grpc")
            if isinstance(grpc, dict) and isinstance(grpc.get("cluster_name"), str):
                found.add(grpc["cluster_name"])
            if isinstance(item.get("collector_cluster"), str):
                found.add(item["collector_cluster"])
            for uri_field in _URI_FIELDS:
                uri = item.get(uri_field)
                if isinstance(uri, dict) and isinstance(uri.get("cluster"), str):
                    found.add(uri["cluster"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _grpc_stand_in(name: str) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}
    return {
        "name": name, "type": "STATIC",
        "load_assignment": {"cluster_name": name,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
        "typed_extension_protocol_options": {_HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {}}}},
    }


def _without_cluster_checks(listener: dict[str, Any]) -> dict[str, Any]:
    """A listener whose inline route configurations do not ask for their clusters to exist
    (a sidecar's inbound routes name its local cluster, checked in its own bootstrap)."""
    chains = [*listener.get("filter_chains", [])]
    if "default_filter_chain" in listener:
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for network_filter in chain.get("filters", []):
            manager = network_filter.get("typed_config", {})
            if manager.get("@type") == _HCM and "route_config" in manager:
                manager["route_config"]["validate_clusters"] = False
    return listener


def _route_listener(name: str, index: int, route_config: dict[str, Any]) -> dict[str, Any]:
    manager = {"@type": _HCM, "stat_prefix": "validate", "route_config": route_config,
               "http_filters": [{"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": _ROUTER}}]}
    return {"name": f"{name}|route", "address": {"socket_address": {
        "address": _ROUTE_HOST, "port_value": index}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}]}
