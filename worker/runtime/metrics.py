"""Prometheus metrics of the workers, one coherent view per prefork worker.

With ``DCMPRESS_METRICS_PORT`` set, the worker's main process serves ``/metrics`` on
that port and aggregates what every pool process recorded, through
prometheus-client's multiprocess mode (a directory of memory-mapped files named by
``PROMETHEUS_MULTIPROC_DIR``; created here if unset). That variable must be set before
the metrics are created, which is why this module does it at import.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "DCMPRESS_METRICS_PORT"

if os.environ.get(PORT_ENV) and not os.environ.get(_MULTIPROC_ENV):
    os.environ[_MULTIPROC_ENV] = tempfile.mkdtemp(prefix="dcmpress-metrics-")

from prometheus_client import (  # noqa: E402 - after the environment is prepared
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)

# Another library (Flower's celery command plugin) may have imported prometheus_client
# before the variable was set; the value class is looked up per metric, so choose again.
values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

log = logging.getLogger(__name__)

OBJECTS = Counter(
    "dcmpress_objects_total", "Objects finished, by terminal state and outcome code.",
    ["outcome", "code"],
)  # fmt: skip
BYTES_IN = Counter(
    "dcmpress_bytes_in_total", "Bytes of finished source objects, by target.", ["target"]
)
BYTES_OUT = Counter(
    "dcmpress_bytes_out_total", "Bytes written for finished objects, by target.", ["target"]
)
STAGE_SECONDS = Histogram(
    "dcmpress_stage_seconds", "Seconds spent per pipeline stage and object.", ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)  # fmt: skip
IN_FLIGHT = Gauge(
    "dcmpress_tasks_in_flight", "Tasks being processed right now.", multiprocess_mode="livesum"
)
RULES = Counter(
    "dcmpress_rule_objects_total", "Objects finished under a batch policy, by rule name.",
    ["rule"],
)  # fmt: skip
RETRIES = Counter("dcmpress_retries_total", "Task retries scheduled, by reason.", ["reason"])


def record_outcome(summary: dict[str, Any], stages: dict[str, float]) -> None:
    """Count one finished object (the pipeline's outcome summary) and its stage times."""
    target = str(summary.get("target") or "none")
    OBJECTS.labels(str(summary["outcome"]), str(summary["code"])).inc()
    BYTES_IN.labels(target).inc(int(summary.get("bytes_in") or 0))
    BYTES_OUT.labels(target).inc(int(summary.get("bytes_out") or 0))
    if summary.get("rule"):
        RULES.labels(str(summary["rule"])).inc()
    for stage, seconds in stages.items():
        STAGE_SECONDS.labels(stage).observe(seconds)


def serve(port: int, address: str) -> None:
    """Serve the aggregated metrics of all pool processes on ``address:port``."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, port)


def process_exited(pid: int) -> None:
    """Drop a dead pool process's live gauges (its counters are kept)."""
    if os.environ.get(_MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def cleanup_directory() -> None:
    """Remove a metrics directory this module created (worker shutdown)."""
    path = os.environ.get(_MULTIPROC_ENV, "")
    if path and os.path.basename(path).startswith("dcmpress-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
