"""`python -m bench.load`: see bench/load/serve.py."""
import sys

from .serve import main

sys.exit(main())
