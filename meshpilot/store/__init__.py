"""The shared store of a fleet of replicas (docs/operations.md, "Running replicas").

Without `--store`, a process's own memory is its store, as always: the endpoint registry
(`discovery/registry.py`) with its TTL sweep, the proxy registry (`xds/status.py`), the token key
and the CA root in `--state-dir`. With `--store etcd://HOST:PORT[,HOST:PORT...]` the same state is
shared through etcd (`etcd.py`), under a key prefix, and each replica keeps its in-memory copy as
the last known state it serves while the store is unreachable:

    <prefix>/state/<file>              the token key and the CA root, sealed (`sealed.py`)
    <prefix>/registrations/<svc>/<ip:port>  self-registrations, each on an etcd lease = its TTL
    <prefix>/docker/<id>               Docker-discovered instances, written by the elected replica
    <prefix>/proxies/<replica>/<conn>  each connected Envoy's status, on its replica's lease
    <prefix>/elections/<name>          who runs what must run once (`election.py`)

This package knows nothing of meshpilot's model: keys, bytes, leases, watches.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/meshpilot"


class StoreError(Exception):
    """A store that cannot be used as configured (a bad URL, a sealed state we cannot open)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now: the last known state keeps serving; writes that need
    the store are refused with this message."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # below the prefix, e.g. "registrations/reviews/10.0.0.7:9080"
    value: bytes
    lease: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "put" | "delete"
    entry: Entry  # a delete's value is empty
    revision: int


def parse_store_url(url: str) -> list[tuple[str, int]]:
    """The endpoints of `etcd://HOST:PORT[,HOST:PORT...]`; StoreError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise StoreError(f"--store: expected etcd://HOST:PORT[,HOST:PORT...], got {url!r}")
    rest = rest.rstrip("/")
    if not rest:
        raise StoreError(f"--store: no endpoint in {url!r}")
    endpoints = []
    for part in rest.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(f"--store: expected HOST:PORT, got {part!r} in {url!r}")
        endpoints.append((host, int(port)))
    return endpoints


def check_prefix(prefix: str) -> str:
    """A key prefix: starts with '/', no trailing '/', printable; StoreError if not."""
    if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/") \
            or not prefix.isprintable() or len(prefix) > 200:
        raise StoreError(f"--store-prefix: expected a path like /meshpilot, got {prefix!r}")
    return prefix.rstrip("/")
