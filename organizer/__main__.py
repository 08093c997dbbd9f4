import sys

from organizer.cli import main

sys.exit(main())
