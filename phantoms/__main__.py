"""``python -m phantoms``: see phantoms.cli."""

from .cli import main

raise SystemExit(main())
