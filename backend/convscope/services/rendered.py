"""What a service hands back to the API: bytes, their media type and extra headers."""

from __future__ import annotations

from dataclasses import dataclass, field

PNG, NPY, JSON = "image/png", "application/x-npy", "application/json"


@dataclass(frozen=True)
class Rendered:
    """Bytes ready to send, their media type and any extra headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.content)
