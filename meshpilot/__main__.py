import sys

from meshpilot.cli import main

sys.exit(main())
