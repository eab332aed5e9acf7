"""Structured logs: every record carries the id of the request it was written for.

``SecurityHeaders`` sets :data:`REQUEST_ID` for each request; context variables follow the
request into the threadpool, so a service's ``log.warning`` in a worker thread carries the
same id as the access line. ``CONVSCOPE_LOG_FORMAT=json`` writes one JSON object per line;
``text`` writes ``key=value`` pairs after the message.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "convscope_request_id", default=None
)

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's coloured copy of the message
    "taskName",
}


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = REQUEST_ID.get() or "-"
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id", ...extras, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": escape_controls(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get() or "-",
        }
        entry.update(
            {k: escape_controls(v) if isinstance(v, str) else v for k, v in _extras(record).items()}
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``2025-01-01T00:00:00 info convscope.access request_id=ab12 msg... key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get() or "-"
        pairs = " ".join(f"{k}={_kv(v)}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname.lower()} {record.name} request_id={request_id} "
        line += escape_controls(record.getMessage()) + (f" {pairs}" if pairs else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def escape_controls(text: str) -> str:
    """Control characters (C0, DEL, C1, line and paragraph separators) as ``\\xNN`` /
    ``\\uNNNN``: a URL or a name from a client can never start a fake log line or send
    terminal escape sequences to whoever reads the log."""
    if not any(_is_control(c) for c in text):
        return text
    return "".join(_escape(c) if _is_control(c) else c for c in text)


def _is_control(c: str) -> bool:
    return c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029"


def _escape(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _kv(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\') and text == escape_controls(text):
        return text
    # JSON escapes quotes, backslashes and C0 controls; escape_controls the rest (DEL, C1).
    return escape_controls(json.dumps(text, ensure_ascii=False))


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else KeyValueFormatter()


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Root logger -> stderr in ``fmt`` (``json`` or ``text``), with request ids."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def uvicorn_log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A ``log_config`` for ``uvicorn.run`` that writes uvicorn's own lines the same way.

    Access lines come from our middleware (logger ``convscope.access``, with route template,
    status, duration and request id), so uvicorn's access logger is silenced.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"convscope": {"()": formatter, "fmt": fmt}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "convscope",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"level": "WARNING", "propagate": False, "handlers": []},
        },
    }
