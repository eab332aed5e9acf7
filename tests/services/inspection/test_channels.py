"""Channel-range parsing: '0,3,5-9' style specs, checked against the channel count."""

from __future__ import annotations

import pytest

from convscope.errors import InvalidParameterError
from convscope.services.inspection.channels import parse_channels

pytestmark = pytest.mark.quick


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", [0]),
        ("0,3,5-9", [0, 3, 5, 6, 7, 8, 9]),
        (" 2 , 1 ,2", [2, 1]),  # order kept, duplicates dropped
        ("4-4", [4]),
        ("9,0-2", [9, 0, 1, 2]),
    ],
)
def test_parses(spec: str | None, expected: list[int] | None) -> None:
    assert parse_channels(spec, 10) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("a", "expected comma-separated indices or ranges"),
        ("3-1", "expected comma-separated indices or ranges"),
        ("1,,2", "expected comma-separated indices or ranges"),
        ("-1", r"expected channel indices in 0\.\.9, got \[-1\]"),
        ("10", r"expected channel indices in 0\.\.9, got \[10\]"),
        ("8-12", r"got \[10, 11, 12\]"),
        ("0-200000", "is too long"),
    ],
)
def test_refuses(spec: str, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message) as refused:
        parse_channels(spec, 10, name="filters")
    assert refused.value.code == "invalid_parameter"
    assert "filters" in str(refused.value.detail)
