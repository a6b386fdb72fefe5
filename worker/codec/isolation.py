"""Run a function in a forked child so a native crash cannot take the caller down.

python-gdcm's RLE encoder aborts the whole process (SIGABRT) on some inputs. A Celery
worker child that dies mid-task has its message redelivered, which would crash again:
a crash loop. Running such a codec in a throw-away fork turns the crash into an
ordinary exception, :class:`CodecCrashed`, that the engine can act on.
"""

from __future__ import annotations

import faulthandler
import io
import os
import pickle
import signal
import tempfile
from collections.abc import Callable
from typing import IO, Any, TypeVar

from pydicom.multival import MultiValue

T = TypeVar("T")


class CodecCrashed(Exception):
    """The isolated function killed its process (signal or abnormal exit)."""


def run_isolated(func: Callable[[], T]) -> T:
    """Call ``func()`` in a forked child and return its result (or re-raise its error).

    The result (or exception) travels back pickled through a pipe.
    """
    read_fd, write_fd = os.pipe()
    # what the codec prints as it dies (C++ "terminate called...") is kept for the
    # error message instead of going to the worker's stderr
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the fork
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        os.close(read_fd)
        faulthandler.disable()  # a crash here is expected and reported by the parent
        os.dup2(stderr.fileno(), 2)
        status = 0
        try:
            try:
                payload = _dumps((True, func()))
            except BaseException as exc:
                payload = _dumps((False, exc))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:
            status = 70
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    with stderr:
        said = _last_words(stderr)
    if os.WIFSIGNALED(wait_status):
        name = signal.Signals(os.WTERMSIG(wait_status)).name
        raise CodecCrashed(f"codec process killed by {name}{said}")
    if os.WEXITSTATUS(wait_status) != 0 or not payload:
        status = os.WEXITSTATUS(wait_status)
        raise CodecCrashed(f"codec process exited with status {status}{said}")
    ok, value = pickle.loads(payload)
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


class _Pickler(pickle.Pickler):
    """pickle, and pydicom values whose converter is a function defined in a function.

    pydicom 3.0 holds a converted multi-valued LUT Descriptor (any that an implicit VR
    source had resolved) in a MultiValue converting with such a local function, which
    pickle cannot name: it travels as its items, already converted.
    """

    def reducer_override(self, obj: Any) -> Any:
        constructor = getattr(obj, "_constructor", None)
        if isinstance(obj, MultiValue) and "<locals>" in getattr(constructor, "__qualname__", ""):
            return _converted_values, (list(obj),)
        return NotImplemented


def _converted_values(items: list[Any]) -> MultiValue[Any]:
    return MultiValue(_as_is, items)


def _as_is(item: Any) -> Any:
    return item


def _dumps(value: object) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(value)
    return buffer.getvalue()


def _last_words(stderr: IO[bytes], limit: int = 300) -> str:
    """The codec's own error text (e.g. a C++ ``what():``), for the message."""
    stderr.seek(0)
    text = " ".join(stderr.read(64 * 1024).decode("utf-8", "replace").split())
    return f" ({text[:limit]})" if text else ""
