"""What one message may cost: its values counted before it is parsed, its records, and
how many messages are parsed at once.

A body made to be expensive is refused for a scan of its text, never parsed; whatever
went wrong is an :class:`EventFormatError` that holds no copy of the body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

from producer.events.fields import EventFormatError, JsonObject, json_type

# What one message may cost, far above what a storage sends: one AWS, MinIO or Ceph
# record is 60-90 JSON values, and a sender batches a few hundred records at most.
# Parsing 250,000 values takes at most ~25 MB and ~0.15 s whatever their shape.
MAX_JSON_VALUES = 250_000  # values and keys in one message, counted before parsing
MAX_RECORDS = 10_000  # records of one message: its rejected ones are kept in memory

# json.loads holds the GIL, so parsing more messages at once (64 webhook requests) would
# add their memory without making anything faster
PARSING = threading.BoundedSemaphore(2)


def load_body(body: object) -> JsonObject:
    """The message as a JSON object, whatever form it arrived in."""
    if isinstance(body, Mapping):
        return body
    if not isinstance(body, str | bytes | bytearray):
        raise EventFormatError(
            f"message body is a {type(body).__name__}, expected text, bytes or a JSON object"
        )
    parsed = load_json(body, "message body")
    if not isinstance(parsed, Mapping):
        shown = json_type(parsed)
        del parsed  # a traceback keeps this frame: it must not keep a parsed poison body
        raise EventFormatError(f"message body is {shown}, expected an object")
    return parsed


def load_json(data: str | bytes | bytearray, where: str) -> object:
    """JSON text (or UTF-8 bytes) parsed within :data:`MAX_JSON_VALUES`; every failure is
    an :class:`EventFormatError` naming ``where``.

    The values are counted on the text before parsing, so a body made to be expensive
    (``[{},{},...]``: 1.4 million objects, ~100 MB, in 4 MiB) costs a scan, not a parse.
    """
    text = data if isinstance(data, str) else _utf8_text(data, where)
    values = _json_values_at_most(text)
    if values > MAX_JSON_VALUES:
        raise EventFormatError(
            f"{where} holds up to {values:,} JSON values, more than any storage event "
            f"notification ({MAX_JSON_VALUES:,}); it was not parsed"
        )
    # the reason is built inside the handler and raised outside it, so the error chains no
    # parser frame (which holds the text) and nothing the parser built
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"{where} is not JSON: {exc.msg} at character {exc.pos}"
    except ValueError as exc:  # e.g. an integer literal longer than Python accepts
        reason = f"{where} is not usable JSON: {exc}"
    except RecursionError:  # absurdly deep nesting is a poison message too
        reason = f"{where} is JSON nested too deeply to be an event"
    raise EventFormatError(reason)


def _utf8_text(data: bytes | bytearray, where: str) -> str:
    """Bytes as text; raised outside the handler, so the error chains no copy of them."""
    try:
        # utf-8-sig: a byte-order mark some HTTP clients add is not an error
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reason = f"{where} is not UTF-8 text ({exc.reason})"
    raise EventFormatError(reason)


def _json_values_at_most(text: str) -> int:
    """An upper bound of the values and keys in JSON text, without parsing it: each one
    but the first follows a ``{``, ``[``, ``,`` or ``:`` (those inside strings count
    too, so it never undercounts). Four scans of 4 MiB take about 12 ms."""
    return 1 + sum(text.count(mark) for mark in "{[,:")
