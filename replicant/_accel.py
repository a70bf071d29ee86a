"""The one place that chooses between the compiled and the pure-Python fast paths.

``replicant._speedups`` is a small C extension built at install time when a
compiler is at hand. It holds the compiled twin of each piece of work done
once per replicated message; the Python original of each stays the
reference (and what runs without the extension):

- ``drain``: libpq.py's ``_drain_python`` (C in ``_drain.c``);
- ``read_row``: decoders/pgoutput.py's ``_walk_tuple``, and ``RowCore``:
  changes.py's ``_RowCore`` (C in ``_rows.c``);
- ``maker``: changes.py's ``new_begin`` and friends (C in ``_events.c``);
- ``from_text``: values.py's ``_from_text_python`` (C in ``_values.c``).

The choice is made once, when this module is imported, and every module
with a fast path reads it once, at its own import: a process runs wholly
compiled or wholly in Python, never a mix. It cannot change later.

- ``REPLICANT_PURE_PYTHON`` set (non-empty): pure Python; the extension is
  not even imported.
- Otherwise the extension if it was built, else pure Python; with
  ``REPLICANT_REQUIRE_SPEEDUPS`` set (non-empty), a missing extension makes
  the import fail instead (for test runs and deployments that must not
  silently run at half speed).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final, Literal

__all__ = ["IMPLEMENTATION", "compiled"]


def _choose() -> ModuleType | None:
    if os.environ.get("REPLICANT_PURE_PYTHON"):
        return None
    try:
        from replicant import _speedups
    except ImportError as error:
        if os.environ.get("REPLICANT_REQUIRE_SPEEDUPS"):
            raise ImportError(
                "replicant._speedups is not built, and REPLICANT_REQUIRE_SPEEDUPS is set "
                f"({error}); install with a C compiler and Python's headers at hand"
            ) from error
        return None
    return _speedups


compiled: Final[ModuleType | None] = _choose()
"""The compiled module in use, or ``None`` when the process runs in pure Python."""

IMPLEMENTATION: Final[Literal["c", "python"]] = "python" if compiled is None else "c"
"""``"c"`` when the compiled fast paths are in use, ``"python"`` when not."""
