"""The command line as a package: `app.py` assembles one module per command group (see its docstring)."""

from obliviate.cli.app import main  # noqa: F401
from obliviate.cli.common import STARTED  # noqa: F401  (first: the demo's wall time starts at process start)
