"""Pure helpers of the HTTP layer: Content-Disposition, log escaping, JSON depth."""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote

import pytest

from convscope.api.logs import KeyValueFormatter, escape_controls
from convscope.api.middleware import host_name, json_depth
from convscope.api.responses import content_disposition


@pytest.mark.parametrize(
    "name",
    ["plain_name.png", 'модель "q"\r\nX-Evil: 1;x.png', "a\\b/c\x00d.npy", "", "名前.json"],
)
def test_content_disposition_is_one_safe_header_that_keeps_the_name(name: str) -> None:
    header = content_disposition(name)
    header.encode("latin-1")  # a valid header value: no non-Latin-1 character
    assert "\r" not in header and "\n" not in header and header.count('"') == 2
    disposition, fallback_part, star_part = header.split("; ")
    assert disposition == "inline"
    fallback = fallback_part.removeprefix('filename="').removesuffix('"')
    assert fallback and all((c.isalnum() and c.isascii()) or c in "._-" for c in fallback)
    if name.isascii() and name.replace(".", "").replace("_", "").isalnum():
        assert fallback == name  # a plain name is its own fallback
    # RFC 5987 ext-value: charset, empty language, percent-encoded UTF-8, exact round trip.
    assert star_part.startswith("filename*=UTF-8''")
    encoded = star_part.removeprefix("filename*=UTF-8''")
    assert all(c.isascii() and (c.isalnum() or c in "%-._~") for c in encoded)
    assert unquote(encoded, encoding="utf-8", errors="strict") == name


def test_text_log_escapes_control_characters() -> None:
    assert escape_controls("a\x1b[31mb\nc\x7f\x85\u2028") == "a\\x1b[31mb\\x0ac\\x7f\\x85\\u2028"
    record = logging.LogRecord("t", logging.INFO, "", 0, "GET %s", ("/x\n2026 forged",), None)
    record.path = "/x\x1b[2J"
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert 'path="/x\\u001b[2J"' in line


@pytest.mark.parametrize(
    "text", ['{"a": [1, {"b": "[[[{{"}]}', "[]", '"x"', "[" * 40 + "]" * 40, '{"a": "\\"["}']
)
def test_json_depth_agrees_with_the_parser(text: str) -> None:
    def depth(value: object) -> int:
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        return 0

    assert json_depth(text) == depth(json.loads(text))


def test_host_name() -> None:
    assert host_name("Example.org:8000") == "example.org"
    assert host_name("[::1]:80") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
