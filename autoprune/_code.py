"""The code a study or a report names as what made it: autoprune's version and its commit."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path


def commit(checkout: Path | None = None) -> str:
    """The commit of ``checkout`` (default: this one), short, with ``-dirty`` when files differ from it
    (``unknown`` outside git): what a report names as the code that made it."""
    root = checkout or Path(__file__).resolve().parents[1]
    done = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def code() -> str:
    """This code, as a study and its report name it: autoprune's version and its commit."""
    return f"autoprune {version('autoprune')} at commit {commit()}"


__all__ = ["code", "commit"]
