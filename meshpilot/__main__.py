import sys

from meshpilot.launch import main

sys.exit(main())
