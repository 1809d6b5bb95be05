"""The command line every demo upstream shares: `--name`, `--host`, `--port`, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable

from meshpilot.local.demo.server import DemoServer


def run_until_interrupted(argv: list[str] | None, *, description: str,
                          build: Callable[[str, str, int], DemoServer],
                          banner: Callable[[str, str, int], str]) -> None:
    """Parse the shared options, start `build(name, host, port)`, print `banner(name, host,
    bound port)`, and serve in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True, help="the name echoed in every answer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    server = build(args.name, args.host, args.port)
    port = server.start()
    print(banner(args.name, args.host, port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
