"""Log sequence numbers.

An :class:`LSN` is an unsigned 64-bit position in the write-ahead log. It is
an ``int`` subclass, so it orders, hashes and compares exactly as the integer
does and costs nothing extra on the hot path, but it prints the way
PostgreSQL does (``16/B374D848``) and refuses values outside 0..2**64-1.
"""

from __future__ import annotations

import re
from typing import SupportsIndex

from replicant.errors import ConfigurationError

__all__ = ["LSN", "MAX_LSN"]

_MAX = (1 << 64) - 1
# Two hex halves of 1 to 8 digits each, as pg_lsn_in accepts them.
_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class LSN(int):
    """A WAL position.

    ``LSN("16/B374D848")`` and ``LSN.parse(...)`` read PostgreSQL's text form;
    ``LSN(n)`` takes an integer from 0 to 2**64-1. Anything else raises
    :class:`~replicant.errors.ConfigurationError` naming the bad value.

    ``lsn + n`` and ``lsn - n`` give an LSN; ``lsn_a - lsn_b`` gives the
    distance in bytes as a plain ``int`` (negative when ``lsn_a < lsn_b``).
    """

    __slots__ = ()

    def __new__(cls, value: str | SupportsIndex | LSN = 0) -> LSN:
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise ConfigurationError(f"not an LSN: {value!r}")
        number = value.__index__()
        if not 0 <= number <= _MAX:
            raise ConfigurationError(f"LSN out of range 0..2**64-1: {number!r}")
        return int.__new__(cls, number)

    @classmethod
    def parse(cls, text: str) -> LSN:
        """Read PostgreSQL's ``X/Y`` text form (hex halves, either case)."""
        if not isinstance(text, str):
            raise ConfigurationError(f"not an LSN: {text!r}")
        match = _TEXT.fullmatch(text.strip())
        if match is None:
            raise ConfigurationError(f"not an LSN: {text!r} (expected text like '16/B374D848')")
        high, low = match.groups()
        return int.__new__(cls, (int(high, 16) << 32) | int(low, 16))

    @classmethod
    def from_int(cls, value: int) -> LSN:
        """Wrap an integer already known to be in range (from a parsed frame).

        Skips the range check; only for values read as unsigned 64-bit.
        """
        return int.__new__(cls, value)

    @property
    def high(self) -> int:
        """The upper 32 bits (the "log id" of the text form)."""
        return int(self) >> 32

    @property
    def low(self) -> int:
        """The lower 32 bits (the offset of the text form)."""
        return int(self) & 0xFFFFFFFF

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"LSN('{self}')"

    def __format__(self, spec: str) -> str:
        if spec:
            return int(self).__format__(spec)
        return str(self)

    def __add__(self, other: int) -> LSN:
        if not isinstance(other, int) or isinstance(other, LSN):
            return NotImplemented
        return LSN(int(self) + other)

    __radd__ = __add__

    def __sub__(self, other: int) -> int:
        if isinstance(other, LSN):
            return int(self) - int(other)
        if not isinstance(other, int):
            return NotImplemented
        return LSN(int(self) - other)

    def __reduce__(self) -> tuple[type[LSN], tuple[int]]:
        return (LSN, (int(self),))


MAX_LSN = LSN(_MAX)
"""The largest position, ``FFFFFFFF/FFFFFFFF``."""
