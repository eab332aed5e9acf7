"""Parsing and checking the user's choice of channels."""

from __future__ import annotations

from convscope.errors import InvalidParameterError


def parse_channels(spec: str | None, count: int, *, name: str = "channels") -> list[int] | None:
    """``"0,3,5-9"`` -> ``[0, 3, 5, 6, 7, 8, 9]``, each checked against ``count`` channels.

    ``None`` or ``""`` means all channels (returns None). Duplicates are dropped, order kept.
    """
    if spec is None or not spec.strip():
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if hi < lo:
                    raise ValueError
                if hi - lo > 100_000:
                    raise InvalidParameterError(name, f"range {part!r} is too long")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise InvalidParameterError(
                name, f"expected comma-separated indices or ranges like '0,3,5-9', got {spec!r}"
            ) from None
    bad = [c for c in out if not 0 <= c < count]
    if bad:
        raise InvalidParameterError(
            name, f"expected channel indices in 0..{count - 1}, got {bad[:5]}"
        )
    return list(dict.fromkeys(out))
