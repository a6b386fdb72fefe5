"""dcmpress workers: ``celery -A worker worker`` finds :data:`app` here.

The Celery app is made on first use (PEP 562), so what only needs the engine or the
settings - ``dcmpress compress`` over local files, most CLI commands - does not pay for
importing Celery and kombu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from worker.runtime.app import create_app

        return create_app
    if name == "app":
        from worker.runtime.app import create_app

        made = globals()["app"] = create_app()  # once: later lookups find the global
        return made
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
