"""``dcmpress listen``: storage events (SQS, a webhook) into jobs, until interrupted.

The intake, its batch rule (a fork per changed job) and its front doors are
:mod:`producer.listen`, :mod:`producer.webhook` and :mod:`producer.spool`; here they are
started, watched and stopped together.
"""

from __future__ import annotations

import signal as signals
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from dcmpress.commands.common import (
    POLICY_HELP,
    Dest,
    ExcludeSuffix,
    MinSize,
    Suffix,
    policy_text,
    settings_or_exit,
)
from dcmpress.console import EXIT_FAILED, fail
from dcmpress.options import compression_flags
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from celery import Celery

    from producer.spool import Spool
    from worker.runtime.ledger import Ledger


@compression_flags
def listen(
    dest: Dest = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Replace each source object (conditional).")
    ] = False,
    sqs: Annotated[str | None, typer.Option(help="SQS queue URL to long-poll.")] = None,
    http: Annotated[
        str | None, typer.Option(help="HOST:PORT for the webhook (MinIO, Ceph, SeaweedFS).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="DCMPRESS_WEBHOOK_TOKEN", help="Bearer token the webhook requires."),
    ] = None,
    batch: Annotated[
        str | None, typer.Option(help="Batch name (default: one batch per bucket and day).")
    ] = None,
    prefix: Annotated[list[str] | None, typer.Option(help="Only keys under this.")] = None,
    exclude_prefix: Annotated[list[str] | None, typer.Option(help="Skip keys under this.")] = None,
    suffix: Suffix = None,
    exclude_suffix: ExcludeSuffix = None,
    min_size: MinSize = 1,
    sqs_endpoint_url: Annotated[
        str | None,
        typer.Option(envvar="DCMPRESS_SQS_ENDPOINT_URL", help="SQS endpoint (emulators)."),
    ] = None,
    wait_seconds: Annotated[int, typer.Option(help="SQS long-poll seconds.")] = 20,
    max_body_kb: Annotated[
        int, typer.Option(help="Webhook: largest request body accepted (KiB); larger is 413.")
    ] = 4096,
    policy: Annotated[
        Path | None, typer.Option(help=f"{POLICY_HELP} Stored with each batch.")
    ] = None,
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="DCMPRESS_LISTEN_SPOOL_DIR",
            help="Webhook: where events wait while Redis is away (default: "
            "$XDG_STATE_HOME/dcmpress/spool, else ~/.local/state/dcmpress/spool).",
        ),
    ] = None,
    spool_max_mb: Annotated[
        int,
        typer.Option(
            envvar="DCMPRESS_LISTEN_SPOOL_MAX_MB",
            help="Webhook: the spool's bound (MiB); past it, 503. 0: no spool.",
        ),
    ] = 1024,
    *,
    options: CompressionOptions,
) -> None:
    """Turn object-storage events (SQS, or a webhook) into jobs, until interrupted."""
    import boto3

    from producer.listen import EventFilter, EventIntake, SqsListener
    from producer.webhook import WebhookLimits, is_loopback, serve_http
    from worker.runtime.contract import S3Location
    from worker.runtime.storage import Storage

    if not sqs and not http:
        raise fail("give --sqs QUEUE_URL and/or --http HOST:PORT")
    host, _, port = (http or "").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if http and not token and not is_loopback(host):
        raise fail(
            f"--http {http} listens beyond this machine: give --token (or "
            "DCMPRESS_WEBHOOK_TOKEN) so only your storage can post events"
        )
    if (dest is None) == (not in_place):
        raise fail("give exactly one of --dest s3://bucket/prefix and --in-place")
    try:
        dest_location = S3Location.parse(dest) if dest else None
    except ConfigurationError as exc:
        raise fail(str(exc)) from None
    policy_given = policy_text(policy, options)
    settings = settings_or_exit()  # (its ledger client is the event path's own, below)
    ledger, celery_app = _event_clients(settings)
    spool = _open_spool(spool_dir, spool_max_mb) if http else None
    intake = EventIntake(
        celery_app, ledger, Storage(settings), settings.queue, dest_location, in_place, options,
        EventFilter(
            prefixes=tuple(prefix or ()), exclude_prefixes=tuple(exclude_prefix or ()),
            suffixes=tuple(suffix or ()), exclude_suffixes=tuple(exclude_suffix or ()),
            min_size=min_size,
        ),
        batch_name=batch,
        policy=policy_given,
        spool=spool,
    )  # fmt: skip
    console = Console(stderr=True)
    stop = threading.Event()
    signals.signal(signals.SIGTERM, lambda *_: stop.set())
    threads: list[threading.Thread] = []
    listener: SqsListener | None = None
    server = None
    drain: threading.Thread | None = None
    if sqs:
        client = boto3.session.Session().client(
            "sqs", endpoint_url=sqs_endpoint_url, region_name=settings.s3_region
        )
        listener = SqsListener(client, sqs, intake, wait_seconds=wait_seconds)
        threads.append(threading.Thread(target=listener.run, name="sqs", daemon=True))
        console.print(f"listening on SQS {sqs}")
    if http:

        def healthy() -> bool:
            # ready while events can be taken: Redis answers, or the spool has room
            if spool is not None and spool.size < spool.max_bytes // 2:
                return True
            try:
                return bool(ledger.redis.ping())
            except Exception:
                return False

        if spool is not None:
            pending = len(spool)
            drain = threading.Thread(
                target=intake.drain_spool, args=(stop,), name="spool", daemon=True
            )
            threads.append(drain)
            console.print(
                f"spool {spool.directory}: {pending:,} event message(s) waiting"
                if pending else f"spool {spool.directory}",
                highlight=False,
            )  # fmt: skip
        limits = WebhookLimits(max_body_bytes=max_body_kb * 1024)
        server = serve_http(intake, host, int(port), token, healthy, limits)
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        console.print(f"listening on http://{shown}:{server.server_port}/", highlight=False)
    for thread in threads:
        thread.start()
    console.print("ready", highlight=False)
    try:
        while not stop.wait(1):
            alive = [thread.is_alive() for thread in threads] + ([server.alive()] if server else [])
            if not all(alive):
                raise fail("a listener thread died; see the log", EXIT_FAILED)
    except KeyboardInterrupt:
        pass
    finally:
        if listener:
            listener.stop()
        if server:
            server.shutdown()
        stop.set()  # the spool's drain stops between two messages
        if drain is not None:
            drain.join(timeout=10)  # (one message at most: its Redis calls give up in 3 s)
        if spool is not None:
            spool.close()
        console.print("stopped")


def _event_clients(settings: WorkerSettings) -> tuple[Ledger, Celery]:
    """The ledger and the Celery app of the event path: a sender waits on every Redis
    call here, so each gives up within seconds (the event is then spooled), where other
    commands wait up to 30 s."""
    from producer.listen import EVENT_REDIS_TIMEOUT
    from worker.runtime.app import create_app
    from worker.runtime.ledger import Ledger

    ledger = Ledger.for_events(settings.redis_url, settings.retention_seconds, EVENT_REDIS_TIMEOUT)
    celery_app = create_app(settings)
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        "socket_timeout": EVENT_REDIS_TIMEOUT,
        "socket_connect_timeout": EVENT_REDIS_TIMEOUT,
    }
    return ledger, celery_app


def _open_spool(spool_dir: Path | None, spool_max_mb: int) -> Spool | None:
    """The webhook's spool (None with --spool-max-mb 0); exit 2 if it cannot be used."""
    from producer.spool import Spool, SpoolInUse, default_directory

    if spool_max_mb <= 0:
        return None
    where = spool_dir or default_directory()
    try:
        return Spool(where, spool_max_mb * 1024 * 1024)
    except SpoolInUse as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot use the spool directory {where}: {exc} (--spool-dir)") from None
