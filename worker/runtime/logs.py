"""Structured logs: one JSON object per line in production, readable text on a terminal.

Outcome and error records carry their fields in ``extra={"dcmpress": {...}}`` (batch,
key, outcome, code, message, stage, attempts, seconds, bytes); this formatter lifts them
to the top level of the JSON line, beside ``time``, ``level``, ``logger`` and ``event``
(the log message). Only these fields and the message are written: never a
dataset, never a credential.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

_CELERY_TASK_FIELDS = ("task_id", "task_name")
_RESERVED = {"time", "level", "logger", "event", "error", *_CELERY_TASK_FIELDS}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record``."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),  # "message" is the outcome's, in the fields
        }
        for name in _CELERY_TASK_FIELDS:
            value = getattr(record, name, None)
            if value and value != "???":
                entry[name] = value
        fields = getattr(record, "dcmpress", None)
        if isinstance(fields, dict):
            # fields come partly from outside (keys, messages): never let them
            # overwrite the line's own keys
            entry.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def wants_json(log_format: str, stream: Any = None) -> bool:
    """JSON unless asked for text, or (``auto``) when writing to a terminal."""
    if log_format != "auto":
        return log_format == "json"
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


def use_json(logger: logging.Logger) -> None:
    """Switch every handler of ``logger`` to the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
