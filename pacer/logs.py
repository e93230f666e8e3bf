"""logs.py: how pacer and uvicorn log: human-readable lines by default, JSON lines (PACER_LOG_FORMAT=json) for log
collectors. Every record says which instance wrote it, which background loop it came from, and the bidder where
there is one (`extra={"bidder": ...}`), so a fleet's logs can be filtered without parsing messages.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")
# The background loop a record comes from: set by Service._supervised in each loop's task (a context per task).
current_loop: contextvars.ContextVar[str | None] = contextvars.ContextVar("pacer_loop", default=None)
_instance = {"id": ""}


def set_instance(instance: str) -> None:
    """Name this process in every record from now on (its fleet instance id)."""
    _instance["id"] = instance


class ContextFilter(logging.Filter):
    """Adds `instance`, `loop` and `bidder` to every record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = _instance["id"]
        record.loop = current_loop.get()
        if not hasattr(record, "bidder"):
            record.bidder = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; keys with no value are left out."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "instance": getattr(record, "instance", None) or None,
            "loop": getattr(record, "loop", None),
            "bidder": getattr(record, "bidder", None),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in doc.items() if v is not None}, ensure_ascii=False)


def log_config(fmt: str, level: str) -> dict[str, Any]:
    """A logging.dictConfig for uvicorn.run(log_config=...): pacer's and uvicorn's records, one format."""
    if fmt not in FORMATS:
        raise ValueError(f"PACER_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    text = "%(asctime)s %(levelname)s %(name)s%(loop_part)s: %(message)s"
    formatter: dict[str, Any] = {"()": JsonFormatter} if fmt == "json" else {"()": TextFormatter, "fmt": text}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "pacer",
        "filters": ["context"],
        "stream": "ext://sys.stderr",
    }
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"pacer": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "pacer": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>[ loop=<loop>][ bidder=<id>]: <message>`."""

    def format(self, record: logging.LogRecord) -> str:
        loop, bidder = getattr(record, "loop", None), getattr(record, "bidder", None)
        record.loop_part = (f" loop={loop}" if loop else "") + (f" bidder={bidder}" if bidder else "")
        return super().format(record)
