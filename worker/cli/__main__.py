"""``python -m worker.cli``: the same as ``paw``."""

from worker.cli import main

raise SystemExit(main())
