"""How the ``dcmpress`` command speaks to its operator when something is wrong.

Expected failures - Redis or S3 unreachable, missing or refused credentials, a bad
option, an unknown batch - are one line that says what failed and what to do, and a
non-zero exit; never a traceback (``dcmpress --debug`` shows it).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console

from worker.errors import DcmpressError, one_line
from worker.settings import WorkerSettings, masked

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

    from worker.runtime.acl import Refusal
    from worker.runtime.ledger import Ledger

EXIT_FAILED = 1  # the environment failed us (unreachable, refused, unknown batch)
EXIT_USAGE = 2  # the command line asked for something impossible


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as ``field: reason`` without its "Value error," prefixes."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "options"
        reason = str(error["msg"]).removeprefix("Value error, ")
        parts.append(reason if error["type"] == "value_error" else f"{where}: {reason}")
    return "; ".join(parts)


def explain(exc: BaseException) -> str | None:
    """One line for an expected failure (or its cause); None for a bug."""
    for error in _chain(exc):
        line = _explain_one(error)
        if line:
            return one_line(line)
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    # the root cause explains best: "cannot reach Redis" beats "retry failed"
    return [*reversed(seen[1:]), seen[0]]


def _explain_one(error: BaseException) -> str | None:
    # imported here, when something failed: `dcmpress compress` never needs them
    import redis
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from kombu.exceptions import OperationalError

    from worker.runtime.acl import refusal as acl_refusal

    settings = _settings()
    redis_url = masked(settings.redis_url) if settings else "DCMPRESS_REDIS_URL"
    endpoint = (settings.s3_endpoint_url if settings else None) or "AWS S3 (no endpoint set)"
    if isinstance(error, redis.AuthenticationError) or (
        isinstance(error, redis.ResponseError) and "NOAUTH" in str(error)
    ):
        return (
            f"Redis at {redis_url} refused the connection's credentials ({error}); put them "
            "in DCMPRESS_REDIS_URL, e.g. redis://:PASSWORD@host:6379/0"
        )
    refused = acl_refusal(error)
    if refused:
        return _explain_acl_refusal(error, refused, redis_url, settings)
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | OperationalError):
        return (
            f"cannot reach Redis at {redis_url} ({error}); set DCMPRESS_REDIS_URL to your "
            "Redis (redis://host:6379/0), or run `dcmpress demo --keep` for a local one"
        )
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return (
            f"no usable S3 credentials ({error}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance or pod role "
            "provides them"
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
        return (
            f"cannot reach the S3 endpoint {endpoint} ({error}); check "
            "DCMPRESS_S3_ENDPOINT_URL (unset means AWS) and the network"
        )
    if isinstance(error, ClientError):
        return _explain_client_error(error)
    if isinstance(error, DcmpressError):
        return str(error)
    return None


def _explain_acl_refusal(
    error: BaseException, refused: Refusal, redis_url: str, settings: WorkerSettings | None
) -> str:
    """A command, key or channel the Redis user may not use: which, and the fix."""
    user = unquote((urlsplit(settings.redis_url).username if settings else None) or "default")
    reason = str(error).rsplit("caused error: ", 1)[-1]  # not a pipeline's arguments
    if refused.command:
        todo = f"here `ACL SETUSER {user} +{refused.command}`"
    elif refused.kind == "script":
        todo = "the server's ACL LOG names the command it refused"
    else:
        todo = "its key and channel patterns included"
    return (
        f"Redis at {redis_url} refused {refused.describe()} to user {user} ({reason}); give "
        f"that user the ACL rules of 'TLS, Redis users, secrets' (docs/guides/security.md; "
        f"worker/runtime/acl.py), {todo}"
    )


def _explain_client_error(error: ClientError) -> str:
    code = str(error.response.get("Error", {}).get("Code", ""))
    message = str(error.response.get("Error", {}).get("Message", "")) or str(error)
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return (
            f"S3 rejected the credentials ({code}: {message}); check AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
        )
    if code in ("AccessDenied", "403"):
        return (
            f"S3 denied access ({message}); the producer needs s3:ListBucket on the source, "
            "workers s3:GetObject on it and s3:PutObject on the destination"
        )
    if code == "NoSuchBucket":
        return f"no such bucket ({message}); check the s3:// URL"
    return f"S3 refused the request ({code}: {message})"


def _settings() -> WorkerSettings | None:
    try:
        return WorkerSettings()
    except ValidationError:
        return None


def resolve_batch(ledger: Ledger, text: str) -> str:
    """The batch id ``text`` names: itself, or the one batch it is a prefix of.

    Raises the Exit of a one-line error that lists the candidates (ambiguous prefix)
    or the nearest ids (unknown batch).
    """
    if ledger.get_batch(text) is not None:
        return text
    known = ledger.batch_ids()
    matches = [batch for batch in known if batch.startswith(text)]
    if len(matches) == 1 and ledger.get_batch(matches[0]) is not None:
        return matches[0]
    if matches:
        raise fail(
            f"{text!r} is the start of {len(matches)} batches: {', '.join(matches[:10])}",
            EXIT_FAILED,
        )
    nearest = difflib.get_close_matches(text, known, n=5, cutoff=0.3)
    hint = f"; nearest: {', '.join(nearest)}" if nearest else "; see `dcmpress batches`"
    if not known and ledger.persistence() == "none":
        hint = (
            "; the ledger is empty and its Redis keeps nothing on disk: if it restarted, "
            "run the batch's `dcmpress enqueue` again (outputs written already are "
            "recognised, not written again)"
        )
    raise fail(f"no batch {text!r} in the ledger{hint}", EXIT_FAILED)
