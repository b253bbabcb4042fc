"""Library logging: modules log to ``autoprune.*``; only the command line attaches a handler."""

from __future__ import annotations

import logging
import sys


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("autoprune") else f"autoprune.{name}")


def configure_cli_logging(verbose: bool = False) -> None:
    """Progress lines to stderr, plain, for the command line."""
    root = logging.getLogger("autoprune")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
