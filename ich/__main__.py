"""Entry point for ``python -m ich``."""

from ich.cli import main

raise SystemExit(main())
