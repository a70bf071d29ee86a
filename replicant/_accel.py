"""Whether the compiled fast paths are in use.

``replicant._speedups`` is a small C module built at install time when a
compiler is at hand; it does the two loops that run once per replicated
message (reading CopyData out of libpq, splitting pgoutput tuples). Each has
a pure-Python equivalent, which runs instead when the module was not built,
or when the environment variable ``REPLICANT_PURE_PYTHON`` is set to a
non-empty value (to compare, or to rule the compiled code out).

The choice is read when a stream or decoder is created, so tests can switch
it with :func:`use_compiled`.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["available", "compiled", "use_compiled"]


def _load() -> ModuleType | None:
    try:
        from replicant import _speedups
    except ImportError:
        return None
    return _speedups


available: ModuleType | None = _load()
"""The compiled module if it was built, whatever the environment says."""

compiled: ModuleType | None = None if os.environ.get("REPLICANT_PURE_PYTHON") else available
"""The compiled module if it is to be used, else ``None``."""


def use_compiled(enabled: bool) -> None:
    """Use the compiled fast paths (if built) or the Python ones from now on."""
    global compiled
    compiled = available if enabled else None
