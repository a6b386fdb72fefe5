"""deploy/kubernetes: rendered by kustomize, valid against the API and CRD schemas,
and safe: no task killed on scale-in, no secret in a ConfigMap, least privilege."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from pydantic import BaseModel

from tests.deploy.files import (
    DEPLOY,
    KUSTOMIZATIONS,
    config_map_data,
    named,
    of_kind,
    our_containers,
    pod_specs,
    render,
)
from worker.runtime.app import create_app
from worker.runtime.reconcile import UNACKED_KEY
from worker.settings import WorkerSettings

# the oldest and the newest Kubernetes release kubernetes-validate bundles that we check
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CUSTOM_RESOURCES: dict[tuple[str, str], type[BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "BASIC_AUTH", "REDIS_URL", "BROKER_URL")

kustomization = pytest.mark.parametrize(
    "directory", KUSTOMIZATIONS, ids=[path.name for path in KUSTOMIZATIONS]
)


@kustomization
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_are_valid_and_strict_against_the_kubernetes_schema(
    directory: Path, version: str
) -> None:
    checked = 0
    for doc in render(directory):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            continue
        # raises on any problem, and SchemaNotFoundError for a kind it does not know
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 10


@kustomization
def test_custom_resources_are_valid_against_their_crd_models(directory: Path) -> None:
    """KEDA and Prometheus Operator objects through their CRDs' pydantic models; a field
    the model does not know (a typo) is dropped by it, so the round trip must be exact."""
    for doc in render(directory):
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_RESOURCES:  # any other kind must be built in (test above)
            model = CUSTOM_RESOURCES[key].model_validate(doc)
            assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc


def _worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(docs, "Deployment", "dcmpress-worker")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _settings_seen_by(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The DCMPRESS_* values a container gets from its ConfigMaps and plain env."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            values.update(config_map_data(docs, source["configMapRef"]["name"]))
    values.update(
        {name: item["value"] for name, item in _env(container).items() if "value" in item}
    )
    return values


@kustomization
def test_workers_finish_their_tasks_before_kubernetes_may_kill_them(directory: Path) -> None:
    docs = render(directory)
    pod = _worker(docs)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    seen = _settings_seen_by(docs, container)
    hard_limit = int(
        seen.get("DCMPRESS_TASK_TIME_LIMIT", WorkerSettings.model_fields["task_time_limit"].default)
    )
    assert pod["terminationGracePeriodSeconds"] > hard_limit
    # SIGTERM must stay Celery's warm shutdown (REMAP_SIGTERM=SIGQUIT would make it cold)
    assert "REMAP_SIGTERM" not in _env(container) and "REMAP_SIGTERM" not in seen
    assert "preStop" not in container.get("lifecycle", {})
    assert container["args"][:4] == ["celery", "-A", "worker", "worker"]
    assert "command" not in container  # the image has no ENTRYPOINT: args is the command


def test_the_backstop_the_manifests_promise_is_what_the_celery_app_sets() -> None:
    """worker-scaling.yaml promises late acks and redelivery if a pod dies anyway."""
    conf = create_app(WorkerSettings()).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    settings = WorkerSettings()
    assert conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout
    text = (DEPLOY / "kubernetes" / "base" / "worker-scaling.yaml").read_text()
    assert "task_acks_late" in text and "task_reject_on_worker_lost" in text
    assert f"DCMPRESS_VISIBILITY_TIMEOUT ({settings.visibility_timeout} s)" in text
    assert f"DCMPRESS_TASK_TIME_LIMIT ({settings.task_time_limit} s)" in text


@kustomization
def test_keda_scales_from_zero_on_the_celery_queue_and_on_unacknowledged_messages(
    directory: Path,
) -> None:
    docs = render(directory)
    (scaled,) = of_kind(docs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "dcmpress-worker"
    assert spec["minReplicaCount"] == 0
    worker = _worker(docs)["spec"]["template"]["spec"]["containers"][0]
    queue = _settings_seen_by(docs, worker).get(
        "DCMPRESS_QUEUE", WorkerSettings.model_fields["queue"].default
    )
    triggers = {trigger["metadata"]["listName"]: trigger for trigger in spec["triggers"]}
    assert set(triggers) == {queue, UNACKED_KEY}
    assert all(trigger["type"] == "redis" for trigger in triggers.values())
    concurrency = int(_env(worker)["DCMPRESS_WORKER_CONCURRENCY"]["value"])
    assert int(triggers[UNACKED_KEY]["metadata"]["listLength"]) == concurrency
    auths = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "TriggerAuthentication")}
    redis_url = _env(worker)["DCMPRESS_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    for trigger in triggers.values():
        # KEDA's operator resolves the address from its own namespace: a bare
        # service name would find another Redis, or none
        host = trigger["metadata"]["address"].rsplit(":", 1)[0]
        assert "." in host, trigger["metadata"]["address"]
        auth = auths[trigger["authenticationRef"]["name"]]
        refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
        assert refs["password"]["name"] == redis_url["name"]  # the workers' Redis secret


@kustomization
def test_secrets_come_only_from_secrets_and_aws_keys_are_optional(directory: Path) -> None:
    docs = render(directory)
    for config_map in of_kind(docs, "ConfigMap"):
        for key, value in (config_map.get("data") or {}).items():
            assert not any(word in key.upper() for word in SECRET_WORDS), key
            assert "requirepass" not in value and "://:" not in value, config_map["metadata"]
    for workload, spec in pod_specs(docs):
        for container in spec["containers"]:
            for name, item in _env(container).items():
                if any(word in name for word in SECRET_WORDS) or name.startswith("AWS_"):
                    assert "secretKeyRef" in item.get("valueFrom", {}), f"{workload}: {name}"
                if name.startswith("AWS_"):
                    assert item["valueFrom"]["secretKeyRef"]["optional"] is True, name
    for workload, container in our_containers(docs):
        if workload != "dcmpress-flower":
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(_env(container)), workload
        else:  # Flower needs the broker only
            assert not [name for name in _env(container) if name.startswith("AWS_")]


@kustomization
def test_every_pod_is_non_root_read_only_and_unprivileged(directory: Path) -> None:
    docs = render(directory)
    for workload, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", workload
        assert spec.get("automountServiceAccountToken") is False, workload
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, workload
            assert context["allowPrivilegeEscalation"] is False, workload
            assert context["capabilities"]["drop"] == ["ALL"], workload
            assert "memory" in container["resources"]["limits"], workload
    for workload, container in our_containers(docs):
        spec = named(docs, "Deployment", workload)["spec"]["template"]["spec"]
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert tmp, f"{workload}: no writable /tmp"
        volume = next(v for v in spec["volumes"] if v["name"] == tmp[0]["name"])
        assert "emptyDir" in volume and volume["emptyDir"]["sizeLimit"], workload


@kustomization
def test_worker_size_follows_the_measured_memory_per_process(directory: Path) -> None:
    """Celery's default concurrency is the node's cores; the pod says how many it gets,
    and its memory holds the main process plus 105 MiB per pool process and objects."""
    docs = render(directory)
    container = _worker(docs)["spec"]["template"]["spec"]["containers"][0]
    concurrency = int(_env(container)["DCMPRESS_WORKER_CONCURRENCY"]["value"])
    resources = container["resources"]
    assert int(resources["requests"]["cpu"]) == concurrency
    limit = resources["limits"]["memory"]
    assert limit == resources["requests"]["memory"]
    assert limit.endswith("Mi") or limit.endswith("Gi")
    mebibytes = int(limit[:-2]) * (1024 if limit.endswith("Gi") else 1)
    assert mebibytes >= 120 + concurrency * (105 + 6 * 64)  # objects up to 64 MB at least


@kustomization
def test_network_policies_let_workers_reach_only_dns_redis_and_s3(directory: Path) -> None:
    docs = render(directory)
    policies = of_kind(docs, "NetworkPolicy")
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        name = doc["metadata"]["name"]
        assert any("Egress" in p["spec"]["policyTypes"] for p in covering), name
        assert any("Ingress" in p["spec"]["policyTypes"] for p in covering), name
    worker = named(docs, "NetworkPolicy", "dcmpress-worker")["spec"]
    ports = {port["port"] for rule in worker["egress"] for port in rule["ports"]}
    assert ports <= {53, 6379, 443}, ports


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


@kustomization
def test_disruption_budgets_and_metrics_scraping_cover_the_workers(directory: Path) -> None:
    docs = render(directory)
    worker = _worker(docs)
    labels = worker["spec"]["template"]["metadata"]["labels"]
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert [b for b in budgets if _selects(b["spec"]["selector"], labels)]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    port = _env(container)["DCMPRESS_METRICS_PORT"]["value"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"] == [int(port)]
    for monitor in of_kind(docs, "ServiceMonitor"):
        services = [
            s
            for s in of_kind(docs, "Service")
            if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        names = {port["name"] for port in services[0]["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= names


def test_the_prometheus_rule_carries_exactly_the_alert_rules_file() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    component = DEPLOY / "kubernetes" / "components" / "prometheus-operator"
    rule = yaml.safe_load((component / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == rules["groups"]


def test_the_aws_overlay_uses_pod_roles_and_sqs_and_no_access_keys() -> None:
    docs = render(DEPLOY / "kubernetes" / "overlays" / "aws")
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "dcmpress-s3"]
    for account in ("dcmpress-worker", "dcmpress-listener"):
        annotations = named(docs, "ServiceAccount", account)["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    listener = named(docs, "Deployment", "dcmpress-listener")
    args = listener["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--sqs" in args
