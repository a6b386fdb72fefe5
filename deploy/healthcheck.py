"""Container health check for every dcmpress role (the image's HEALTHCHECK).

Asks the role's own HTTP endpoint on this container and exits 0 if it answers 200:
``HEALTHCHECK_URL`` if set (Flower: ``http://127.0.0.1:5555/healthcheck``; the
listener's webhook: ``http://127.0.0.1:8080/healthz``, which answers 200 only while
Redis does), else the worker's ``/metrics`` on ``DCMPRESS_METRICS_PORT`` (served by the
worker's main process). With neither set (a one-shot ``dcmpress enqueue``, an SQS-only
listener) there is nothing to ask: it says so and exits 0. Standard library only: it
starts in a few milliseconds and imports nothing of the worker.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def health_url(environ: dict[str, str]) -> str | None:
    """The endpoint this container's role serves, or None if it serves none."""
    if environ.get("HEALTHCHECK_URL"):
        return environ["HEALTHCHECK_URL"]
    if environ.get("DCMPRESS_METRICS_PORT"):
        return f"http://127.0.0.1:{environ['DCMPRESS_METRICS_PORT']}/metrics"
    return None


def main() -> int:
    """Exit status for Docker: 0 healthy, 1 unhealthy."""
    url = health_url(dict(os.environ))
    if url is None:
        print("no health endpoint configured (HEALTHCHECK_URL, DCMPRESS_METRICS_PORT)")
        return 0
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
