"""`python -m bench.compare`: see bench/compare/cli.py."""
from .cli import main

raise SystemExit(main())
