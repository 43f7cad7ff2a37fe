"""`python -m bench.soak` (= `make soak`): see bench/soak/cli.py."""
import sys

from .cli import main

sys.exit(main())
