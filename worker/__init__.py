"""plaid-atomic-worker: Plaid bank links to verified Atomic funding sources."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "plaid-atomic-worker"


def version() -> str:
    """The installed package's version (``paw --version``), from its metadata."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
