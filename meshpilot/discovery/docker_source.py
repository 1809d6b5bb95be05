"""Docker discovery: running containers labelled for meshpilot become service instances.

    docker run --label meshpilot.service=reviews --label meshpilot.port=9080 \\
               --label meshpilot.label.version=v2 ...

- `meshpilot.service` names the Service, `meshpilot.port` the container port it serves on, and
  every `meshpilot.label.<k>=<v>` becomes endpoint label `<k>: <v>` (subsets select on them).
- The address: with a network configured (`--docker-network NAME`), the container's IP on that
  network and `meshpilot.port`: for an Envoy on that network too. Without one, the host port
  `meshpilot.port/tcp` is published on (`-p 9080` or `-p 127.0.0.1::9080`), at the binding's IP
  (`host_address`, default 127.0.0.1, when bound to every address): for an Envoy on the host.
  A container that publishes nothing is reached at its own IP on its first network.
- Only running containers count: `start`/`unpause` add one, `die`/`stop`/`kill`-then-`die`/
  `pause`/`destroy` remove it, straight from the engine's event stream (no polling), so a stopped
  container leaves within moments. A network connect/disconnect re-reads the container.
- The engine connection is re-made with exponential backoff (0.5 s doubling to 30 s). On every
  (re)connect the event stream is opened first, then running containers are listed and become
  the whole of the Docker source (`EndpointRegistry.replace_source`): nothing is missed between
  the two and containers that went away meanwhile leave. While the engine is unreachable, the
  instances last seen are kept.

It uses a few calls of the `docker` SDK only: `from_env()`, `client.events(decode=True,
filters=...)` (a stream with `close()`), `client.containers.list(filters=...)`,
`client.containers.get(id)` (objects with `id`, `name`, `labels`, `attrs`, `status`) and
`client.close()`. Tests pass a fake client with those.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from meshpilot.discovery.registry import EndpointRegistry, Instance, check_host

log = logging.getLogger("meshpilot.discovery.docker")

SOURCE = "docker"
SERVICE_LABEL = "meshpilot.service"
PORT_LABEL = "meshpilot.port"
LABEL_PREFIX = "meshpilot.label."

_ADD = frozenset({"start", "unpause", "restart", "connect", "disconnect"})
_REMOVE = frozenset({"die", "stop", "pause", "destroy", "oom"})
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})\Z")
_ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})


def _default_client() -> Any:
    import docker  # the SDK is imported only when Docker discovery is turned on

    return docker.from_env()


def instance_id(container_id: str) -> str:
    return f"{SOURCE}:{container_id[:12]}"


def instance_of(container: Any, network: str | None = None,
                host_address: str = "127.0.0.1") -> Instance | None:
    """The instance a container stands for, or None (not labelled, not reachable)."""
    labels: dict[str, str] = container.labels or {}
    service = labels.get(SERVICE_LABEL)
    if service is None:
        return None
    name = getattr(container, "name", container.id[:12])
    port_text = labels.get(PORT_LABEL, "")
    if not _NAME.match(service) or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        log.warning("container %s: invalid %s=%r or %s=%r; ignored", name, SERVICE_LABEL,
                    service, PORT_LABEL, port_text)
        return None
    port = int(port_text)
    extra = tuple(sorted((k[len(LABEL_PREFIX):], v) for k, v in labels.items()
                         if k.startswith(LABEL_PREFIX) and len(k) > len(LABEL_PREFIX)))
    settings = (container.attrs or {}).get("NetworkSettings") or {}
    networks: dict[str, Any] = settings.get("Networks") or {}
    host: str | None = None
    if network is not None:
        host = (networks.get(network) or {}).get("IPAddress") or None
        if host is None:
            log.warning("container %s (service %s) is not on network %r; ignored", name,
                        service, network)
            return None
    else:
        bindings = (settings.get("Ports") or {}).get(f"{port}/tcp") or []
        bindings = sorted(bindings, key=lambda b: ":" in (b.get("HostIp") or ""))  # IPv4 first
        if bindings:
            bound = bindings[0].get("HostIp") or ""
            host = host_address if bound in _ANY_ADDRESS else bound
            port = int(bindings[0]["HostPort"])
        else:
            host = settings.get("IPAddress") or next(
                (n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        if not host:
            log.warning("container %s (service %s) has no address; ignored", name, service)
            return None
    try:
        host = check_host(host)
    except ValueError:
        log.warning("container %s: %r is not an IP address; ignored", name, host)
        return None
    return Instance(id=instance_id(container.id), service=service, host=host, port=port,
                    labels=extra, source=SOURCE)


class DockerSource:
    """Keeps the registry's Docker instances current, on a daemon thread of its own."""

    def __init__(self, registry: EndpointRegistry, *, network: str | None = None,
                 host_address: str = "127.0.0.1",
                 client_factory: Callable[[], Any] = _default_client,
                 backoff: tuple[float, float] = (0.5, 30.0)):
        self.registry = registry
        self.network = network
        self.host_address = host_address
        self.client_factory = client_factory
        self.backoff = backoff
        self.connected = threading.Event()
        self.connects = 0  # successful (re)connections, for status and tests
        self.last_error: str | None = None
        self._stopping = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="meshpilot-docker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                stream.close()  # unblocks the thread reading events
        if self._thread is not None:
            self._thread.join(timeout)

    def describe(self) -> dict[str, object]:
        return {"connected": self.connected.is_set(), "connects": self.connects,
                "network": self.network, "last_error": self.last_error}

    # ---- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stopping.is_set():
            client = None
            try:
                client = self.client_factory()
                # Events first, then the list: a change in between is in the stream.
                self._stream = client.events(decode=True,
                                             filters={"type": ["container", "network"]})
                self.resync(client)
                self.connects += 1
                self.connected.set()
                self.last_error = None
                delay = self.backoff[0]
                log.info("docker: connected; %d instance(s)",
                         len(self.registry.instances(source=SOURCE)))
                for event in self._stream:
                    if self._stopping.is_set():
                        break
                    self.handle(client, event)
                if not self._stopping.is_set():
                    self.last_error = "the engine's event stream ended"
            except Exception as e:  # any failure: reconnect with backoff
                if not self._stopping.is_set():
                    self.last_error = f"{type(e).__name__}: {e}"
            finally:
                self.connected.clear()
                self._stream = None
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            if self._stopping.is_set():
                break
            log.warning("docker: %s; reconnecting in %.1fs", self.last_error, delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, self.backoff[1])

    def resync(self, client: Any) -> None:
        """Every running labelled container becomes the whole of the Docker source."""
        containers = client.containers.list(filters={"label": SERVICE_LABEL,
                                                     "status": "running"})
        found = [i for c in containers
                 if (i := instance_of(c, self.network, self.host_address)) is not None]
        self.registry.replace_source(SOURCE, found)

    def handle(self, client: Any, event: dict[str, Any]) -> None:
        kind = event.get("Type")
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        if kind == "network":
            container_id = (actor.get("Attributes") or {}).get("container")
        elif kind == "container":
            container_id = actor.get("ID") or event.get("id")
            if SERVICE_LABEL not in (actor.get("Attributes") or {}):
                return  # not ours (event attributes carry the container's labels)
        else:
            return
        if not container_id or (action not in _ADD and action not in _REMOVE):
            return
        if action in _REMOVE:
            removed = self.registry.remove(instance_id(container_id))
            if removed is not None:
                log.info("docker: %s %s: instance %s of %s removed", action, container_id[:12],
                         removed.address, removed.service)
            return
        try:
            container = client.containers.get(container_id)
        except Exception as e:  # gone already (NotFound)
            log.debug("docker: %s %s: %s", action, container_id[:12], e)
            self.registry.remove(instance_id(container_id))
            return
        instance = None
        if getattr(container, "status", "running") == "running":
            instance = instance_of(container, self.network, self.host_address)
        if instance is None:
            self.registry.remove(instance_id(container_id))
            return
        self.registry.register(instance.service, instance.host, instance.port, instance.labels,
                               source=SOURCE, id=instance.id)
        log.info("docker: %s %s: instance %s of %s", action, container_id[:12],
                 instance.address, instance.service)
