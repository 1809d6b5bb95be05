"""Shared fixtures for the whole test suite.

Rules every fixture here keeps: bind 127.0.0.1 only, take ports from the OS, bound every wait,
and stop everything it started at teardown (even when the test fails).

Sections: ports, work directories, meshpilot processes, real Envoy processes, echo backends. Add
new shared fixtures under a section of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import EtcdProcess, MeshpilotProcess

from meshpilot.base.netutil import free_port as _free_port
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

# ----- ports ------------------------------------------------------------------------------------


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a free TCP port on 127.0.0.1 each time it is called."""
    return _free_port


# ----- work directories -------------------------------------------------------------------------


@pytest.fixture
def tmp_work(tmp_path: Path) -> Path:
    """A per-test scratch directory for config files, logs and sockets."""
    work = tmp_path / "work"
    work.mkdir()
    return work


# ----- meshpilot processes ---------------------------------------------------------------------


@pytest.fixture
def meshpilot_factory(tmp_path: Path) -> Iterator[Callable[..., MeshpilotProcess]]:
    """`start(policy, **kwargs) -> MeshpilotProcess`: `meshpilot serve` on `policy`, healthy.

    Keyword arguments go to MeshpilotProcess (xds_port, extra_args). All are stopped at
    teardown and their log tails printed, which pytest shows only when the test failed.
    """
    started: list[MeshpilotProcess] = []

    def start(policy: Path, **kwargs: Any) -> MeshpilotProcess:
        mp = MeshpilotProcess(policy, tmp_path, **kwargs)
        started.append(mp)  # before start(): a failed start is still stopped at teardown
        return mp.start()

    yield start

    for mp in started:
        mp.stop()
        print(f"--- meshpilot log tail ---\n{mp.log_tail(30)}")


# ----- etcd ------------------------------------------------------------------------------------


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd on free loopback ports, data in tmp_path; skipped without the binary (except
    under CI=true: support.etcd_binary)."""
    server = EtcdProcess(tmp_path / "etcd-data", tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


# ----- real Envoy processes ---------------------------------------------------------------------

EnvoyFactory = Callable[..., EnvoyProcess]


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[EnvoyFactory]:
    """`start(bootstrap, **kwargs) -> EnvoyProcess`: starts a real Envoy and waits until ready.

    `ready_timeout` (seconds, default 15) bounds the wait; other keyword arguments go to
    EnvoyProcess (name, log_level, base_id, extra_args, ...). Each Envoy gets
    its own work directory; all are stopped at teardown, and their log tails are printed, which
    pytest shows only when the test failed.
    """
    started: list[EnvoyProcess] = []

    def start(
        bootstrap: Mapping[str, Any], *, ready_timeout: float = 15.0, **kwargs: Any
    ) -> EnvoyProcess:
        name = kwargs.pop("name", f"envoy-{len(started)}")
        envoy = EnvoyProcess(bootstrap, tmp_path / name, name=name, **kwargs)
        started.append(envoy)  # before start(): a failed start is still stopped at teardown
        envoy.start()
        envoy.wait_ready(timeout=ready_timeout)
        return envoy

    yield start

    for envoy in started:
        envoy.stop()
        print(f"--- {envoy.name} (exit {envoy.returncode}) log tail ---\n{envoy.log_tail(20)}")


# ----- echo backends ----------------------------------------------------------------------------


@pytest.fixture
def echo_factory() -> Iterator[Callable[[str], EchoServer]]:
    """`start(name) -> EchoServer`: a running echo backend on 127.0.0.1; stopped at teardown."""
    started: list[EchoServer] = []

    def start(name: str) -> EchoServer:
        server = EchoServer(name)
        started.append(server)
        server.start()
        return server

    yield start

    for server in started:
        server.stop()
