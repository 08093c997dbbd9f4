import sys

from resource_monitor.cli import main

sys.exit(main())
