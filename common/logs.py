"""JSON logs, one object per line, carrying callConnectionId / correlationId when the caller passes them.

Usage: `log.info("chunk landed", extra=call_fields(call_id, corr, seq=3))`. Azure Monitor and Container Apps
log queries can then filter on the fields directly.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


JsonFormatter.converter = __import__("time").gmtime


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Azure SDK logs every HTTP request at INFO; that is noise at our volume.
    logging.getLogger("azure").setLevel(logging.WARNING)


def call_fields(call_id: str | None, correlation_id: str | None = None, **more: Any) -> dict[str, Any]:
    return {"callConnectionId": call_id, "correlationId": correlation_id, **more}
