"""deploy/compose.yaml: valid Compose, self-contained, safe to stop, one .env."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from dcmpress.stack.services import find_redis_server, free_port
from tests.deploy.files import (
    COMPOSE,
    DEPLOY,
    compose_environment,
    compose_variables,
    duration_seconds,
    env_example,
    interpolate,
    load_compose,
    uses_our_image,
)
from worker.settings import WorkerSettings


def _check_compose_spec(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    _check_compose_spec(COMPOSE)


def test_compose_file_with_the_example_env_follows_the_compose_specification(
    tmp_path: Path,
) -> None:
    """Interpolated as Compose would: replicas and limits become the values users get."""
    resolved = tmp_path / "compose.json"
    resolved.write_text(json.dumps(load_compose()))
    _check_compose_spec(resolved)


def test_every_variable_compose_reads_is_in_the_env_example_and_every_example_is_read() -> None:
    used = compose_variables(COMPOSE.read_text())
    example = env_example()
    required = {name for name, default in used.items() if default is None}
    assert required <= set(example), sorted(required - set(example))
    assert set(example) <= set(used), f"unused in compose.yaml: {sorted(set(example) - set(used))}"
    interpolate(COMPOSE.read_text(), example)  # no ${X:?...} left without a value


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = load_compose()
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def test_the_stack_is_self_contained(services: dict[str, Any]) -> None:
    assert {"redis", "s3", "worker", "flower", "listener", "prometheus"} <= set(services)
    worker = compose_environment(services["worker"])
    assert worker["DCMPRESS_S3_ENDPOINT_URL"] == "http://s3:8333"
    assert worker["DCMPRESS_REDIS_URL"].startswith("redis://:")
    assert "@redis:6379/" in worker["DCMPRESS_REDIS_URL"]
    # the bundled S3 creates both buckets and accepts the workers' keys
    s3 = services["s3"]
    example = env_example()
    assert f"-bucket={example['SOURCE_BUCKET']},{example['DEST_BUCKET']}" in s3["command"]
    s3_env = compose_environment(s3)
    assert s3_env["AWS_ACCESS_KEY_ID"] == worker["AWS_ACCESS_KEY_ID"]
    assert s3_env["AWS_SECRET_ACCESS_KEY"] == worker["AWS_SECRET_ACCESS_KEY"]
    assert "-master.telemetry=false" in s3["command"]  # nothing leaves the machine
    # the filer posts the source bucket's new objects to the listener, with its token
    listener = services["listener"]
    assert s3_env["WEED_NOTIFICATION_WEBHOOK_ENDPOINT"] == "http://listener:8080/"
    assert (
        s3_env["WEED_NOTIFICATION_WEBHOOK_PATH_PREFIXES"] == f"/buckets/{example['SOURCE_BUCKET']}/"
    )
    assert (
        s3_env["WEED_NOTIFICATION_WEBHOOK_BEARER_TOKEN"]
        == compose_environment(listener)["DCMPRESS_WEBHOOK_TOKEN"]
    )
    assert listener["command"][:4] == ["dcmpress", "listen", "--http", "0.0.0.0:8080"]


def test_redis_requires_a_password_keeps_an_aof_and_never_evicts(services: dict[str, Any]) -> None:
    compose = load_compose()
    redis = services["redis"]
    config = compose["configs"][redis["configs"][0]["source"]]["content"]
    settings = dict(line.split(None, 1) for line in config.splitlines() if line and line[0] != "#")
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    assert redis["configs"][0]["target"] in " ".join(redis["command"])
    # the password reaches redis-server through stdin, never its arguments
    script = redis["command"][-1]
    assert "requirepass $REDIS_PASSWORD" in script and "--requirepass" not in script
    assert compose_environment(redis)["REDIS_PASSWORD"] == env_example()["REDIS_PASSWORD"]
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_worker_spools_to_disk_not_to_memory(services: dict[str, Any]) -> None:
    """tmpfs pages count against the container's memory limit; spools can be large."""
    worker = services["worker"]
    assert not worker.get("tmpfs")
    assert {"type": "volume", "target": "/tmp"} in worker["volumes"]


def test_workers_are_given_longer_to_stop_than_the_hard_task_time_limit(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]
    grace = duration_seconds(worker["stop_grace_period"])
    hard_limit = int(compose_environment(worker)["DCMPRESS_TASK_TIME_LIMIT"])
    assert grace > hard_limit
    assert grace > WorkerSettings.model_fields["task_time_limit"].default
    assert int(worker["deploy"]["replicas"]) >= 2  # N workers
    assert worker["deploy"]["resources"]["limits"]["memory"]


def test_every_long_running_service_restarts_and_reports_its_health(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        if "tools" in service.get("profiles", []):
            continue  # one-shot commands
        assert service.get("restart") in ("unless-stopped", "always"), name
        if name != "redis-exporter":  # a scratch image: no shell, no client to ask with
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_dcmpress_containers_run_read_only_unprivileged_with_a_writable_tmp(
    services: dict[str, Any],
) -> None:
    ours = {name: service for name, service in services.items() if uses_our_image(service)}
    assert set(ours) == {"worker", "flower", "listener", "producer"}
    for name, service in ours.items():
        assert service["read_only"] is True, name
        tmpfs = any(str(mount).startswith("/tmp:") for mount in service.get("tmpfs", []))
        volume = any(
            isinstance(mount, dict) and mount["target"] == "/tmp"
            for mount in service.get("volumes", [])
        )
        assert tmpfs != volume, f"{name}: /tmp must be writable, one way"
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["init"] is True, name  # a PID 1 that forwards SIGTERM and reaps


def test_flower_requires_auth_and_gets_no_storage_credentials(services: dict[str, Any]) -> None:
    flower = compose_environment(services["flower"])
    user, _, password = flower["FLOWER_BASIC_AUTH"].partition(":")
    assert user and password and "," not in password
    assert "FLOWER_UNAUTHENTICATED_API" not in flower
    assert not [name for name in flower if name.startswith(("AWS_", "DCMPRESS_S3_"))]


def test_prometheus_scrapes_every_worker_flower_and_the_queue(services: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["dcmpress-worker"]["dns_sd_configs"][0]
    port = compose_environment(services["worker"])["DCMPRESS_METRICS_PORT"]
    assert worker["names"] == ["worker"] and str(worker["port"]) == port
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    assert "--port=5555" in services["flower"]["command"]
    assert jobs["redis"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]
    keys = compose_environment(services["redis-exporter"])["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert keys.split(",") == [WorkerSettings.model_fields["queue"].default, "unacked"]
    # the rules file Prometheus loads is the one compose mounts
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in services["prometheus"]["volumes"][:2])
    assert mounts["./prometheus/alerts.yaml"] in config["rule_files"]


def _redis_configurations() -> dict[str, str]:
    compose = load_compose()
    kubernetes = next(
        doc
        for doc in yaml.safe_load_all(
            (DEPLOY / "kubernetes/overlays/example/redis.yaml").read_text()
        )
        if doc["kind"] == "ConfigMap"
    )
    return {
        "compose": compose["configs"]["redis-conf"]["content"],
        "kubernetes": kubernetes["data"]["redis.conf"],
    }


@pytest.fixture
def redis_with(tmp_path: Path) -> Iterator[Callable[[str, str], redis.Redis]]:
    """Start a real redis-server on 127.0.0.1 with a configuration file and a
    password on stdin, as compose and the example overlay start theirs."""
    started: list[subprocess.Popen[bytes]] = []
    clients: list[redis.Redis] = []

    def start(configuration: str, password: str) -> redis.Redis:
        path = tmp_path / "redis.conf"
        # Redis changes into `dir` while it reads the file: use ours instead of /data
        assert "\ndir /data\n" in configuration
        path.write_text(configuration.replace("\ndir /data\n", f"\ndir {tmp_path}\n"))
        port = free_port()
        # explicit options come after the file's and stdin's, and win over them
        proc = subprocess.Popen(
            [find_redis_server(), str(path), "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(tmp_path), "--daemonize", "no", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdin is not None
        proc.stdin.write(f"requirepass {password}\n".encode())
        proc.stdin.close()
        # no retries of its own: the loop below does the waiting
        client = redis.Redis(
            host="127.0.0.1", port=port, password=password, retry=Retry(NoBackoff(), 0)
        )
        clients.append(client)
        for _ in range(200):
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"redis-server refused the configuration: {proc.stderr.read()!r}")
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not answer")

    yield start
    for client in clients:
        client.close()
    for proc in started:
        proc.terminate()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_redis_configuration_loads_in_a_real_redis_with_the_password_from_stdin(
    where: str, redis_with: Callable[[str, str], redis.Redis]
) -> None:
    client = redis_with(_redis_configurations()[where], "pw-from-stdin")
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(client.config_get("maxmemory")["maxmemory"]) > 0
    port = client.connection_pool.connection_kwargs["port"]
    with (
        redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0)) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
