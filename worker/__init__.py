"""dcmpress workers: ``celery -A worker worker`` finds :data:`app` here."""

from worker.runtime.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
