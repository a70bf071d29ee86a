"""LSN: parsing, printing, ordering and arithmetic."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicant import LSN, ConfigurationError
from replicant.lsn import MAX_LSN


def test_parse_and_print_like_postgresql() -> None:
    lsn = LSN("16/B374D848")
    assert int(lsn) == (0x16 << 32) | 0xB374D848
    assert str(lsn) == "16/B374D848"
    assert repr(lsn) == "LSN('16/B374D848')"
    assert LSN.parse("16/b374d848") == lsn
    assert str(LSN(0)) == "0/0"
    assert f"{LSN('0/1A')}" == "0/1A"


def test_high_half_sorts_unsigned() -> None:
    assert LSN("0/80000000") > LSN("0/7FFFFFFF")
    assert LSN("80000000/0") > LSN("7FFFFFFF/FFFFFFFF")
    assert sorted([LSN("0/80000000"), LSN("0/7FFFFFFF")])[0] == LSN("0/7FFFFFFF")


def test_extremes_round_trip() -> None:
    assert str(LSN("FFFFFFFF/FFFFFFFF")) == "FFFFFFFF/FFFFFFFF"
    assert LSN(str(MAX_LSN)) == MAX_LSN == 2**64 - 1


def test_arithmetic() -> None:
    a = LSN("1/0")
    b = a + 0x10
    assert isinstance(b, LSN) and str(b) == "1/10"
    assert b - a == 0x10 and type(b - a) is int
    assert a - b == -0x10
    assert isinstance(b - 0x10, LSN) and b - 0x10 == a
    assert isinstance(5 + a, LSN)
    with pytest.raises(ConfigurationError):
        MAX_LSN + 1
    with pytest.raises(ConfigurationError):
        LSN(0) - 1


def test_hash_and_equality_as_integer() -> None:
    assert hash(LSN("0/10")) == hash(16)
    assert {LSN("0/10"): 1}[16] == 1
    assert pickle.loads(pickle.dumps(LSN("5/6"))) == LSN("5/6")
    assert type(pickle.loads(pickle.dumps(LSN("5/6")))) is LSN


@pytest.mark.parametrize(
    "bad", ["1/", "/1", "G/0", "1/2/3", "", "123456789/0", "0/123456789", "1 /2", "0x1/2", "-1/0"]
)
def test_bad_text_names_it(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        LSN(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, None, True, b"0/1"])
def test_bad_values(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        LSN(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_text_round_trip(value: int) -> None:
    lsn = LSN(value)
    assert LSN.parse(str(lsn)) == value
    assert LSN(str(lsn).lower()) == value


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_order_matches_integers(a: int, b: int) -> None:
    assert (LSN(a) < LSN(b)) == (a < b)
    assert LSN(a) - LSN(b) == a - b
