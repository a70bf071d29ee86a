"""The compiled/pure-Python choice: made once, at import, and followed everywhere.

Runs in whatever implementation the process chose, and checks that every
fast path took that one: all compiled, or (``REPLICANT_PURE_PYTHON=1``) none,
with the compiled module not even imported. The other choice is checked in
a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from replicant import _accel, changes, libpq, values
from replicant.changes import Row
from replicant.decoders import PgOutputDecoder, pgoutput

ROOT = Path(__file__).parent.parent
SPEEDUPS = "replicant._speedups"


def _is_compiled(obj: Any) -> bool:
    return type(obj).__module__ == SPEEDUPS or getattr(obj, "__module__", None) == SPEEDUPS


def fast_paths() -> dict[str, bool]:
    """Each fast path of the package, and whether it runs compiled code."""
    paths = {
        "RowCore": any(cls.__module__ == SPEEDUPS for cls in Row.__mro__),
        "drain": libpq.drain is not libpq._drain_python,
        "read_row": pgoutput._read_row is not None,
        "decoder read_row": PgOutputDecoder("p")._read_row is not None,
        "pgoutput decode": _is_compiled(PgOutputDecoder("p").decode),
        "from_text": values._from_text is not values._from_text_python,
        "int reader": _is_compiled(values.text_reader(values.OID.INT4)),
    }
    if sys.version_info >= (3, 11):  # before, the caster reads them: no compiled reader
        paths["timestamptz reader"] = _is_compiled(values.text_reader(values.OID.TIMESTAMPTZ))
    for name in ("new_begin", "new_commit", "new_insert", "new_update", "new_delete"):
        paths[name] = _is_compiled(getattr(changes, name))
    return paths


def test_implementation_names_the_choice() -> None:
    assert _accel.IMPLEMENTATION in ("c", "python")
    assert (_accel.IMPLEMENTATION == "c") == (_accel.compiled is not None)
    if os.environ.get("REPLICANT_PURE_PYTHON"):
        assert _accel.IMPLEMENTATION == "python"
    elif os.environ.get("REPLICANT_REQUIRE_SPEEDUPS"):
        assert _accel.IMPLEMENTATION == "c"  # CI builds the module and must use it


def test_every_fast_path_follows_the_choice() -> None:
    paths = fast_paths()
    if _accel.IMPLEMENTATION == "c":
        assert all(paths.values()), paths
        assert issubclass(Row, _accel.compiled.RowCore)  # type: ignore[union-attr]
    else:
        assert not any(paths.values()), paths
        assert SPEEDUPS not in sys.modules, "the compiled module was imported"


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REPLICANT_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pure_python_process_runs_no_compiled_code() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_every_fast_path_follows_the_choice",
            f"{__file__}::test_implementation_names_the_choice",
        ],
        cwd=ROOT,
        env={**os.environ, "REPLICANT_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


# Imported as if the module had not been built.
WITHOUT_MODULE = f"""
import sys
sys.modules[{SPEEDUPS!r}] = None
from replicant import _accel
print(_accel.IMPLEMENTATION)
"""


def test_missing_module_means_pure_python() -> None:
    result = run(WITHOUT_MODULE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"


def test_required_module_missing_fails_the_import() -> None:
    result = run(WITHOUT_MODULE, REPLICANT_REQUIRE_SPEEDUPS="1")
    assert result.returncode != 0
    assert "REPLICANT_REQUIRE_SPEEDUPS" in result.stderr
    # Asking for pure Python is a choice, not a missing module.
    pure = run(WITHOUT_MODULE, REPLICANT_REQUIRE_SPEEDUPS="1", REPLICANT_PURE_PYTHON="1")
    assert pure.returncode == 0, pure.stderr
    assert pure.stdout.strip() == "python"


def test_the_choice_cannot_be_switched_at_run_time() -> None:
    assert not hasattr(_accel, "use_compiled")
    if _accel.compiled is None:
        pytest.skip("the compiled module is not in use")
    result = run("from replicant import _accel; print(_accel.IMPLEMENTATION)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "c"
