"""Sizes as people write them, read as they meant."""

from __future__ import annotations

import pytest

from common.sizes import mib, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("160MiB", 160 << 20),
        ("160 MiB", 160 << 20),
        ("160m", 160 << 20),
        ("1.5GiB", 3 << 29),
        ("8G", 8 << 30),
        ("24GB", 24 * 10**9),
        ("512kB", 512_000),
        ("4096", 4096),
    ],
)
def test_binary_and_decimal_units_are_read_as_written(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "160 MiBs", "-5MiB", "0", "1e9", "MiB", "nan"])
def test_what_is_not_a_size_is_refused_saying_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"160MiB|positive"):
        parse_size(text)


def test_a_size_reads_back_as_people_write_it() -> None:
    assert mib(160 << 20) == "160 MiB"
    assert mib(8 << 30) == "8 GiB"
    assert mib(int(98.66 * (1 << 20))) == "98.7 MiB"
