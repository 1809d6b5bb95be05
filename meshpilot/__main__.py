import sys

from meshpilot.base import memory

if sys.argv[1:2] == ["serve"]:
    # Before the heavy imports: the server replaces itself at once with one on the C library's
    # malloc (base/memory.py; cli.main does the same for the `meshpilot` script).
    memory.use_system_allocator(sys.argv[1:])

from meshpilot.cli import main

sys.exit(main())
