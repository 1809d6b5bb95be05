"""A tiny gRPC echo upstream for demos and tests: `meshpilot.demo.Echo/Say` answers with the
server's name, the message, and the request metadata it saw (so a test can tell which upstream
answered, through which proxy, and with what headers Envoy added).

The stubs are generated from `protos/echo.proto` by grpcio-tools on first use, into a cache
directory keyed by the proto's content and the grpcio-tools version (`$MESHPILOT_CACHE_DIR`, else
`$XDG_CACHE_HOME/meshpilot`, else `~/.cache/meshpilot`); nothing generated is committed.

    python -m meshpilot.local.demo.grpc_echo --name g1 --port 50051
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from meshpilot.local.demo.runner import run_until_interrupted
from meshpilot.local.demo.server import DemoServer

__all__ = ["GrpcEchoServer", "load_stubs", "main"]

PROTO = Path(__file__).with_name("protos") / "echo.proto"
SERVICE = "meshpilot.demo.Echo"

_lock = threading.Lock()
_stubs: tuple[ModuleType, ModuleType] | None = None


def cache_dir() -> Path:
    explicit = os.environ.get("MESHPILOT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshpilot"


def load_stubs() -> tuple[ModuleType, ModuleType]:
    """(echo_pb2, echo_pb2_grpc), generated once per proto content and grpcio-tools version."""
    global _stubs
    with _lock:
        if _stubs is None:
            folder = _generate()
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            _stubs = (importlib.import_module("echo_pb2"),
                      importlib.import_module("echo_pb2_grpc"))
        return _stubs


def _generate() -> Path:
    from grpc_tools import protoc  # imported here: only the demo needs grpcio-tools

    tools_version = getattr(importlib.import_module("grpc_tools"), "__version__", "") or \
        _distribution_version("grpcio-tools")
    key = hashlib.blake2b(PROTO.read_bytes() + tools_version.encode(), digest_size=8).hexdigest()
    target = cache_dir() / f"grpc-echo-{key}"
    if (target / "echo_pb2_grpc.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Generate aside, then rename into place: concurrent test workers never see half a folder.
    scratch = Path(tempfile.mkdtemp(prefix=".grpc-echo-", dir=target.parent))
    try:
        include = str(Path(protoc.__file__).parent / "_proto")
        code = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}",
                            f"--python_out={scratch}", f"--grpc_python_out={scratch}",
                            PROTO.name])
        if code != 0:
            raise RuntimeError(f"grpcio-tools could not compile {PROTO} (exit {code})")
        with contextlib.suppress(OSError):  # another process got there first: use theirs
            os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not (target / "echo_pb2_grpc.py").is_file():
        raise RuntimeError(f"generated stubs missing in {target}")
    return target


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


class GrpcEchoServer(DemoServer):
    """The echo service on (host, port); port 0 picks a free one. Plaintext HTTP/2 (h2c)."""

    kind = "grpc echo server"

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(name, host, port)
        self._server: grpc.Server | None = None
        self.calls = 0

    def _serve(self) -> int:
        pb2, pb2_grpc = load_stubs()
        owner = self

        class Servicer(pb2_grpc.EchoServicer):  # type: ignore[name-defined,misc]
            def Say(self, request: Any, context: grpc.ServicerContext) -> Any:
                owner.calls += 1
                metadata = {k: v for k, v in context.invocation_metadata()
                            if isinstance(v, str)}
                return pb2.EchoReply(backend=owner.name, message=request.message,
                                     metadata=metadata)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb2_grpc.add_EchoServicer_to_server(Servicer(), server)
        port = server.add_insecure_port(f"{self.host}:{self._requested_port}")
        if port == 0:
            raise RuntimeError(f"grpc echo server {self.name} could not bind "
                               f"{self.host}:{self._requested_port}")
        server.start()
        self._server = server
        return port

    def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5)


def main(argv: list[str] | None = None) -> None:
    """Run one GrpcEchoServer in the foreground until interrupted."""
    run_until_interrupted(
        argv, description="meshpilot demo gRPC echo upstream",
        build=GrpcEchoServer,
        banner=lambda name, host, port: (f"grpc echo {name} listening on {host}:{port} "
                                         f"({SERVICE}/Say)"))


if __name__ == "__main__":
    main()
