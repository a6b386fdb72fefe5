"""The command line: one source for every option, and what it prints."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from kombu import Connection
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from dcmpress.cli import app
from dcmpress.console import masked
from dcmpress.options import FLAGS
from dcmpress.views import batches_table, doctor_table, outcomes_table
from tests.support import options_probe
from worker.codec.options import CompressionOptions
from worker.codec.targets import all_plugin_status


@pytest.mark.parametrize("command", ["compress", "enqueue", "listen"])
def test_every_compression_option_is_a_flag_of_the_command(command: str) -> None:
    click_command = get_command(app).commands[command]  # type: ignore[attr-defined]
    params = {param.name for param in click_command.params}
    assert set(CompressionOptions.model_fields) <= params


def test_flags_become_the_options_and_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DCMPRESS_JLS_ERROR", "7")
    monkeypatch.setenv("DCMPRESS_MIN_RATIO", "1.5")
    probe, seen = options_probe()
    result = CliRunner().invoke(probe, [
        "run", "x", "--target", "jpeg-ls-near,rle", "--jls-error", "3", "--no-verify",
        "--plugin", "rle=pydicom", "--plugin-option", "compression_ratios=[40]",
        "--plugin-option", "label=text", "--new-uid", "--not-dicom", "fail",
        "--high-bits", "keep", "--unsupported", "fail", "--transcode", "--j2k-cr", "20,5",
        "--no-pixel-data", "skip", "--encapsulate-ext",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    [options] = seen
    assert options.model_dump() == {
        **CompressionOptions().model_dump(),
        "target": ["jpeg-ls-near", "rle"], "jls_error": 3, "verify": False,
        "encoding_plugin": ["rle=pydicom"],
        "plugin_options": {"compression_ratios": [40], "label": "text"},
        "generate_instance_uid": True, "not_dicom": "fail", "high_bits": "keep",
        "unsupported": "fail", "transcode": True, "j2k_cr": [20.0, 5.0],
        "no_pixel_data": "skip", "encapsulate_ext": True,
        "min_ratio": 1.5,  # not given as a flag: the environment's
    }  # fmt: skip


def test_without_flags_the_defaults_users_get_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    for flag in FLAGS:
        monkeypatch.delenv(f"DCMPRESS_{flag.field.upper()}", raising=False)
    probe, seen = options_probe()
    assert CliRunner().invoke(probe, ["run", "x"]).exit_code == 0
    assert seen == [CompressionOptions()]


def test_a_bad_choice_names_the_flag_and_the_choices() -> None:
    probe, _ = options_probe()
    result = CliRunner().invoke(probe, ["run", "x", "--high-bits", "maybe"])
    assert result.exit_code == 2
    assert "--high-bits" in result.output and "clear" in result.output


def test_passwords_are_masked_in_printed_urls() -> None:
    assert masked("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert masked("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert masked("redis://host:6379/0") == "redis://host:6379/0"
    assert masked("rediss://u:pw@[::1]:6380/0?ssl_cert_reqs=required") == (
        "rediss://u:***@[::1]:6380/0?ssl_cert_reqs=required"
    )
    assert masked("redis://host/0?password=pw&db=1") == "redis://host/0?password=***&db=1"


def test_no_password_reaches_celerys_configuration_or_a_settings_repr() -> None:
    """Flower shows every Celery configuration value's repr (``inspect conf``); Celery
    censors the keys it knows, not ours: the settings' repr masks every URL's password."""
    import json

    from worker.runtime.app import create_app
    from worker.settings import WorkerSettings

    settings = WorkerSettings(
        redis_url="redis://worker:s3cret-pw@127.0.0.1:6379/0",
        broker_url="redis://:other-pw@127.0.0.1:6380/0",
        s3_endpoint_url="https://key:s3-pw@127.0.0.1:9000",
    )
    shown = [repr(settings), str(settings), f"{settings!r}"]
    app = create_app(settings)
    shown.append(json.dumps(app.conf.table(with_defaults=True, censored=True), default=repr))
    for text in shown:
        for secret in ("s3cret-pw", "other-pw", "s3-pw"):
            assert secret not in text
    assert "worker:***@127.0.0.1:6379" in shown[0]
    assert settings.redis_url == "redis://worker:s3cret-pw@127.0.0.1:6379/0"  # still usable


@pytest.mark.parametrize(
    ("reply", "refused", "todo"),
    [
        ("NOPERM this user has no permissions to run the 'evalsha' command",  # 7.0
         "the 'evalsha' command", "`ACL SETUSER dcmpress +evalsha`"),
        ("NOPERM User dcmpress has no permissions to run the 'script|load' command",  # 7.2
         "the 'script|load' command", "`ACL SETUSER dcmpress +script|load`"),
        ("NOPERM No permissions to access a key", "a key", "key and channel patterns"),
        ("NOPERM this user has no permissions to access one of the channels used as "
         "arguments", "a Pub/Sub channel", "key and channel patterns"),
        ("ERR The user executing the script can't run this command or subcommand script: "
         "f0e1, on @user_script:21.", "a command of a Lua script", "ACL LOG names"),  # 7.0
    ],
)  # fmt: skip
def test_an_acl_refusal_is_one_line_naming_what_to_grant(
    reply: str, refused: str, todo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import NoPermissionError, ResponseError

    from dcmpress.console import explain

    monkeypatch.setenv("DCMPRESS_REDIS_URL", "redis://dcmpress:hunter2@redis.internal:6379/0")
    code, _, text = reply.partition(" ")  # redis-py keeps the text after the error code
    error = (NoPermissionError if code == "NOPERM" else ResponseError)(text)
    line = explain(error)
    assert line is not None, type(error)
    assert line.startswith("Redis at redis://dcmpress:***@redis.internal:6379/0 refused ")
    assert f"refused {refused} to user dcmpress" in line and todo in line
    assert "hunter2" not in line and "\n" not in line
    # a pipeline's error quotes the command and its arguments: they are not repeated
    error.args = (f"Command # 1 (HSET dcmpress:batch:b spec {{...}}) of pipeline caused error: "
                  f"{error.args[0]}",)  # fmt: skip
    assert explain(error) == line


def test_a_redis_error_that_no_acl_made_is_not_explained_as_one() -> None:
    from redis.exceptions import ResponseError

    from dcmpress.console import explain

    assert explain(ResponseError("WRONGTYPE Operation against a key of the wrong kind")) is None


def test_flowers_masked_broker_url_is_kombus_not_an_empty_password_of_ours() -> None:
    # Flower prints Connection.as_uri(), which masks the password field even when the
    # URL has none; the URL dcmpress builds (RedisServer.url) has no user information.
    connection = Connection("redis://127.0.0.1:6379/0")
    assert connection.password is None
    assert connection.as_uri() == "redis://:**@127.0.0.1:6379/0"


def _render(renderable: Any) -> list[str]:
    console = Console(width=80, record=True)
    console.print(renderable)
    return console.export_text().splitlines()


def test_tables_keep_identifiers_whole_at_80_columns() -> None:
    rows = [
        {"batch": "dicom-archive-2019-jpeg-ls-rle-1c9e2f0a", "state": "complete",
         "source": "s3://dicom-archive-2019/", "dest": "s3://dicom-archive-2019-out/",
         "targets": "jpeg-ls, rle", "done": 100000, "skipped": 12, "failed": 3, "pending": 0},
        {"batch": "events-dicom-archive-20261201", "state": "cancelled", "source": "s3://x/",
         "dest": "in place", "targets": "jpeg-ls", "done": 1, "skipped": 0, "failed": 0,
         "pending": 5},
    ]  # fmt: skip
    lines = _render(batches_table(rows, 80))
    assert max(len(line) for line in lines) <= 80
    for row in rows:
        assert any(row["batch"] in line and row["state"] in line for line in lines)
    statuses = all_plugin_status()
    lines = _render(doctor_table(statuses, 80))
    assert max(len(line) for line in lines) <= 80
    for status in statuses:
        assert any(str(status.target.uid) in line for line in lines)
    outcomes = [
        {"key": "synthetic/mr-multiframe.dcm", "state": "skipped",
         "code": "unknown_transfer_syntax", "ratio": 1.0, "message": "x" * 200},
        {"key": "examples/palette_color.dcm", "state": "done", "code": "compressed",
         "ratio": 13.64, "message": "jpeg-ls/pyjpegls"},
    ]  # fmt: skip
    lines = _render(outcomes_table(outcomes, 80))
    assert max(len(line) for line in lines) <= 80
    assert any("skipped" in line and "unknown_transfer_syntax" in line and "1.00" in line
               for line in lines)  # fmt: skip
    assert any("examples/palette_color.dcm" in line and "13.64" in line for line in lines)


def test_the_command_line_loads_no_network_client_until_a_command_needs_one() -> None:
    """`dcmpress compress` and `--help` start without redis, boto3, Celery or the
    producer (about a second of imports on a small machine)."""
    code = (
        "import sys, dcmpress.cli; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('redis', 'boto3', 'botocore', 'kombu', 'celery', 'producer', 'starlette', "
        "'uvicorn') or m.startswith('worker.runtime'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
