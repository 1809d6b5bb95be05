"""The docker-compose deployment (compose/), on a real Docker engine.

compose/docker-compose.yml runs three meshpilot replicas sharing their state through an etcd
(Docker-label discovery on the elected one, the policy folder hot-reloaded), an edge Envoy and the bookinfo-like mesh of meshpilot/local/demo/bookinfo.py, each service
with its sidecar Envoy. No image can be pulled here, so compose/docker-compose.test.yml swaps every
image for a nearly empty one imported locally (`docker import`) and bind-mounts the host's /usr,
its Python and this repository (with .venv: meshpilot and envoy) read-only; ports are free ones,
the project and network names unique, the policy a copy this test edits.

One scenario, through the edge, on the page productpage serves (which versions answered):
the stack comes up and productpage reaches details and both reviews versions through the
sidecars; `docker stop` of the reviews v1 replica takes it out of rotation; starting it again,
and scaling reviews-v2 to two replicas, gives the started ones traffic; an edited policy file
(weights) changes routing; kill -9 of a replica, and the next edit still reaches every Envoy,
whose status the other replicas list. Skipped only when no Docker engine is reachable.

The compose tool: `docker compose` (the plugin) if present, else `docker-compose`; with neither,
the same containers are made with the Docker SDK from the same two files (`SdkCompose`);
MESHPILOT_COMPOSE_TOOL=sdk forces that path.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import docker_client, eventually, http_get

from meshpilot.base.netutil import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(260)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
IMAGE = "meshpilot-compose-test:1"

CALL = re.compile(r'data-service="(?P<service>[a-z]+)" data-version="(?P<version>[a-z0-9]+)"'
                  r'(?: data-instance="(?P<instance>[^"]+)")?')


def compose_tool() -> list[str]:
    """The real compose tool: the `docker compose` plugin, else docker-compose (v1); with
    neither, [] (the containers are then made with the Docker SDK from the same files).
    MESHPILOT_COMPOSE_TOOL=sdk forces the SDK."""
    if os.environ.get("MESHPILOT_COMPOSE_TOOL") == "sdk":
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if subprocess.run(["docker", "compose", "version"], capture_output=True,
                          timeout=20).returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else []


def ensure_image(client) -> None:
    """A root filesystem of empty mount points and the merged-/usr symlinks: everything else
    (/usr, Python, the repository) is bind-mounted by compose/docker-compose.test.yml."""
    import docker.errors

    try:
        client.images.get(IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, mode in [("usr", 0o755), ("etc", 0o755), ("root", 0o700), ("proc", 0o755),
                           ("sys", 0o755), ("dev", 0o755), ("run", 0o755), ("var", 0o755),
                           ("tmp", 0o1777)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            tar.addfile(info)
    repository, tag = IMAGE.split(":")
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)


FILES = (COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "docker-compose.test.yml")

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class SdkCompose:
    """Only when no compose tool is installed: the same files, read and merged as compose does
    for what they use (services' image, command, environment, labels, volumes merged by target,
    ports, stop_signal, depends_on, profiles (none asked for); `${VAR}` and `${VAR:-default}`;
    one named network with the service names as aliases), the containers made with the Docker SDK and labelled like
    compose's own (com.docker.compose.project/service)."""

    def __init__(self, client, project: str, files: tuple[Path, ...], env: dict[str, str]):
        import yaml

        self.client, self.project = client, project
        self.services: dict[str, dict] = {}
        self.network = ""
        for path in files:
            doc = self._interpolate(yaml.safe_load(path.read_text()), env)
            for name, network in (doc.get("networks") or {}).items():
                self.network = (network or {}).get("name") or f"{project}_{name}"
            for name, service in (doc.get("services") or {}).items():
                merged = self.services.setdefault(name, {})
                volumes = {v.split(":")[1]: v for v in merged.get("volumes", [])}
                volumes.update({v.split(":")[1]: v for v in service.get("volumes", [])})
                merged.update(service)
                merged["volumes"] = [self._named(v) for v in volumes.values()]

    def _named(self, volume: str) -> str:
        """A named volume (`name:/path`) under the project's prefix, as compose names it."""
        source = volume.split(":")[0]
        return volume if source.startswith(("/", ".", "$")) or source.startswith(self.project) \
            else f"{self.project}_{volume}"

    def _interpolate(self, value, env: dict[str, str]):
        if isinstance(value, dict):
            return {k: self._interpolate(v, env) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, env) for v in value]
        if isinstance(value, str):
            return _VARIABLE.sub(lambda m: env.get(m["name"]) or m["default"] or "", value)
        return value

    def up(self) -> None:
        self.client.networks.create(self.network, driver="bridge")
        # A service with `profiles` starts only when its profile is asked for (compose's rule):
        # the monitoring profile's Prometheus and Grafana are not part of this stack.
        order = sorted((s for s in self.services if not self.services[s].get("profiles")),
                       key=lambda s: bool(self.services[s].get("depends_on")))
        for name in order:
            self.run(name, 1)

    def scale(self, service: str, replicas: int) -> None:
        for index in range(2, replicas + 1):
            self.run(service, index)

    def run(self, service: str, index: int):
        spec = self.services[service]
        ports = {}
        for mapping in spec.get("ports", []):
            host, host_port, container_port = mapping.rsplit(":", 2)
            ports[f"{container_port}/tcp"] = (host, int(host_port))
        labels = {**spec.get("labels", {}), "com.docker.compose.project": self.project,
                  "com.docker.compose.service": service,
                  "com.docker.compose.container-number": str(index)}
        networks = spec.get("networks") or []
        aliases = [service, *(a for n in networks if isinstance(networks, dict)
                              for a in (networks[n] or {}).get("aliases", []))]
        endpoint = self.client.api.create_endpoint_config(aliases=aliases)
        return self.client.containers.run(
            spec["image"], [str(a) for a in spec.get("command", [])], detach=True,
            name=f"{self.project}-{service}-{index}", labels=labels,
            environment=spec.get("environment", {}), volumes=spec["volumes"], ports=ports,
            stop_signal=spec.get("stop_signal"), network=self.network,
            networking_config={self.network: endpoint})


class Stack:
    """One compose project: the base file plus the test override, driven by the compose tool
    (or, without one, by `SdkCompose`)."""

    def __init__(self, client, tool: list[str], work: Path) -> None:
        self.client = client
        self.tool = tool
        suffix = uuid.uuid4().hex[:8]
        self.project = f"meshpilot-test-{suffix}"
        self.network = f"meshpilot-test-{suffix}"
        self.policy = work / "policy"
        shutil.copytree(COMPOSE_DIR / "policy", self.policy)
        self.state = work / "state"  # meshpilot's: `meshpilot status` signs a token with its key
        self.state.mkdir(mode=0o700)
        self.edge_port, self.admin_port = free_port(), free_port()
        self.admin_ports = [self.admin_port, free_port(), free_port()]  # meshpilot-1, -2, -3
        python_prefix = Path(os.path.realpath(sys.base_prefix))
        self.env = {**os.environ,
                    "MESHPILOT_TEST_IMAGE": IMAGE,
                    "MESHPILOT_TEST_REPO": str(REPO),
                    "MESHPILOT_TEST_PYTHON": str(python_prefix),
                    "MESHPILOT_TEST_POLICY": str(self.policy),
                    "EDGE_PORT": str(self.edge_port),
                    "MESHPILOT_ADMIN_PORT": str(self.admin_port),
                    "MESHPILOT_ADMIN_PORT_2": str(self.admin_ports[1]),
                    "MESHPILOT_ADMIN_PORT_3": str(self.admin_ports[2]),
                    "MESHPILOT_TEST_STATE": str(self.state),
                    "MESH_NETWORK": self.network}
        self.sdk = None if tool else SdkCompose(client, self.project, FILES, self.env)

    def compose(self, *args: str, timeout: float = 60) -> str:
        command = [*self.tool, "-p", self.project, *(a for f in FILES for a in ("-f", str(f))),
                   *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def up(self) -> None:
        if self.sdk:
            self.sdk.up()
        else:
            self.compose("up", "-d", timeout=90)

    def scale(self, service: str, replicas: int) -> None:
        if self.sdk:
            self.sdk.scale(service, replicas)
        else:
            self.compose("up", "-d", "--no-deps", "--no-recreate", "--scale",
                         f"{service}={replicas}", service)

    def containers(self, service: str | None = None) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=True, filters={"label": labels})

    def logs(self) -> str:
        if self.sdk:
            return "\n".join(f"{c.name}: {line}" for c in self.containers()
                             for line in c.logs(tail=30).decode(errors="replace").splitlines())
        try:
            return self.compose("logs", "--no-color", "--tail", "30", timeout=30)
        except Exception as e:
            return f"(no logs: {e})"

    def down(self) -> None:
        """Everything this project created goes, even if the compose tool fails."""
        if self.tool:
            with contextlib.suppress(Exception):  # -v: the state and credential volumes too
                self.compose("down", "-v", "-t", "1", "--remove-orphans", timeout=60)
        for container in self.containers():
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for network in self.client.networks.list(names=[self.network]):
            with contextlib.suppress(Exception):
                network.remove()
        for volume in self.client.volumes.list(filters={"name": self.project}):
            with contextlib.suppress(Exception):
                volume.remove(force=True)

    def page(self, headers: dict[str, str] | None = None) -> dict[str, tuple[str, str | None]]:
        """productpage through the edge: per service, (version, instance) that answered."""
        status, _, body = http_get(f"http://127.0.0.1:{self.edge_port}/", headers, timeout=5)
        assert status == 200, (status, body[:300])
        return {m["service"]: (m["version"], m["instance"])
                for m in CALL.finditer(body.decode())}

    def reviews(self, n: int) -> Counter[str]:
        """Which reviews versions answered `n` pages (`none`: reviews was unavailable)."""
        return Counter(self.page()["reviews"][0] for _ in range(n))

    def reviews_instances(self, n: int) -> set[tuple[str, str | None]]:
        return {self.page()["reviews"] for _ in range(n)}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    client = docker_client(timeout=10)
    tool = compose_tool()
    ensure_image(client)
    s = Stack(client, tool, tmp_path)
    try:
        yield s
    finally:
        print(f"--- logs ({' '.join(tool) or 'Docker SDK'}) ---\n{s.logs()}")
        s.down()
        client.close()


def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    def safe() -> bool:
        try:
            return check()
        except (OSError, AssertionError, KeyError):
            return False

    eventually(safe, timeout=timeout, interval=0.2, what=what)


def test_the_compose_stack_routes_discovers_and_reloads(stack: Stack):
    started = time.monotonic()
    stack.up()

    # Up: the edge reaches productpage, which reaches details and reviews through its sidecar.
    until(lambda: stack.page()["details"][0] == "v1" and stack.page()["reviews"][0] != "none",
          "a page through the edge with details and reviews", timeout=100)
    page = stack.page()
    assert page["productpage"][0] == "v1" and page["details"][0] == "v1", page
    until(lambda: set(stack.reviews(10)) == {"v1", "v2"}, "both reviews versions to answer")
    # productpage passes x-canary on; the reviews Route sends it to v2.
    assert {stack.page({"x-canary": "true"})["reviews"][0] for _ in range(10)} == {"v2"}

    # `docker stop` of the v1 replica: out of rotation, only v2 answers (and nothing fails).
    (v1,) = stack.containers("reviews-v1")
    v1.stop(timeout=2)
    until(lambda: stack.reviews(20) == Counter({"v2": 20}), "only reviews v2 after the stop",
          timeout=10)

    # Starting it again: it gets traffic again.
    v1.start()
    until(lambda: set(stack.reviews(10)) == {"v1", "v2"}, "the restarted v1 replica's traffic")

    # Another replica of v2: it gets traffic too (three reviews instances answer).
    stack.scale("reviews-v2", 2)
    assert len(stack.containers("reviews-v2")) == 2
    until(lambda: len({i for v, i in stack.reviews_instances(20) if v == "v2"}) == 2,
          "the new reviews-v2 replica's traffic")

    # An edited policy file: weights 100/0 send every call to v1, with the v2 replicas running.
    reviews = stack.policy / "reviews.yaml"
    text = reviews.read_text()
    assert "  - backends: [reviews]" in text
    reviews.write_text(text.replace(
        "  - backends: [reviews]",
        "  - backends: [{service: reviews, subset: v1, weight: 100},"
        " {service: reviews, subset: v2, weight: 0}]"))
    until(lambda: stack.reviews(20) == Counter({"v1": 20}), "the new weights to apply")

    # The fault block of the file, uncommented: half of the calls to reviews fail (503).
    text = reviews.read_text()
    assert "    # fault:\n    #   abort:" in text
    reviews.write_text(text.replace("    # fault:\n    #   abort:", "    fault:\n      abort:"))
    until(lambda: set(stack.reviews(20)) == {"v1", "none"}, "the fault to apply")

    # `meshpilot status` against a replica's published admin port: every Envoy of the fleet
    # (whichever replica it is connected to) ACKed the new config.
    def all_synced(admin_port: int) -> bool:
        done = subprocess.run([sys.executable, "-m", "meshpilot", "status", "--admin-address",
                               f"127.0.0.1:{admin_port}", "--state-dir", str(stack.state)],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0 and "policy /policy: ok" in done.stdout and all(
            f" {view} " in done.stdout for view in ("edge", "productpage", "details", "reviews"))

    until(lambda: all_synced(stack.admin_port), "meshpilot status: every view SYNCED",
          timeout=60)

    # kill -9 of a replica: its Envoys move to the other two, which serve the next edit, and
    # the fleet's status on another replica still lists every view.
    (first,) = stack.containers("meshpilot-1")
    first.kill()
    text = reviews.read_text()
    reviews.write_text(text.replace("weight: 100}, {service: reviews, subset: v2, weight: 0}",
                                    "weight: 0}, {service: reviews, subset: v2, weight: 100}"))
    until(lambda: set(stack.reviews(20)) == {"v2", "none"},
          "the edit after a replica was killed to apply", timeout=20)
    until(lambda: all_synced(stack.admin_ports[1]),
          "meshpilot status on replica 2: every view SYNCED", timeout=60)
    assert time.monotonic() - started < 240
