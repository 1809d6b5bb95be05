"""The `meshpilot` command and `python -m meshpilot`: the server's allocator first, then the CLI.

`meshpilot serve` runs on the C library's malloc (base/memory.py), which the interpreter reads
only at its start, so the process replaces itself before anything heavy is imported: the CLI
imports the whole server (gRPC, aiohttp, the protos: about 2 s of CPU), and doing that twice
would double every server's start.
"""

from __future__ import annotations

import sys

from meshpilot.base import memory


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        memory.use_system_allocator(sys.argv[1:])  # returns only if it did not replace us
    from meshpilot.cli import main as cli_main

    return cli_main()
