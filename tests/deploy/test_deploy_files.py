"""deploy/ parses, and says what the deployment promises: policies, one beat, auth, grace.

These read the files (no process runs here); test_deploy_commands runs what they say.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.commands import (
    DEPLOY,
    K8S,
    SYSTEMD,
    DeployCommand,
    Unit,
    all_units,
    compose_units,
    container_env,
    interpolate_compose,
    k8s_documents,
    k8s_units,
    load_compose,
    pod_templates,
    procfile_units,
    read_env_file,
    read_unit_file,
    systemd_units,
)
from tiercel.core.settings import Settings

SHAPES = {
    "compose": compose_units,
    "k8s": k8s_units,
    "systemd": systemd_units,
    "procfile": procfile_units,
}
DEFAULT_TIME_LIMIT = 1800.0


def _roles(units: list[Unit]) -> list[str]:
    return [u.main.role for u in units if u.main is not None]


def _workload(name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        doc for _path, doc in pod_templates() if doc["metadata"]["name"] == name
    )
    return found


def _container(name: str) -> dict[str, Any]:
    return _workload(name)["spec"]["template"]["spec"]["containers"][0]


def _time_limit(env: dict[str, str]) -> float:
    return float(env.get("TIERCEL_TASK_TIME_LIMIT", DEFAULT_TIME_LIMIT))


# --- every file parses ---------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert documents, f"{path} is empty"
        for document in documents:
            assert isinstance(document, dict), path


def test_every_k8s_document_has_kind_api_version_and_name() -> None:
    for path, doc in k8s_documents():
        if path.name == "kustomization.yaml":
            continue
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path


def test_compose_needs_exactly_the_variables_of_its_env_example() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used <= set(read_env_file(DEPLOY / ".env.example")), used
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        interpolate_compose(text, {})  # a missing secret is an error, not an empty password


def test_systemd_units_parse_with_their_sections() -> None:
    for path in sorted(SYSTEMD.glob("*")):
        sections = read_unit_file(path)
        assert "Unit" in sections and "Install" in sections, path
        if path.suffix == ".service":
            assert sections["Service"]["ExecStart"], path


def test_dockerfile_runs_as_a_user_without_a_shell_wrapper() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM ")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert not any(line.startswith("ENTRYPOINT") for line in lines)


def test_every_shape_runs_the_same_services() -> None:
    for shape, units in SHAPES.items():
        roles = _roles(units())
        for role in ("worker", "beat", "flower", "exporter"):
            assert role in roles, f"{shape} has no {role}"


# --- exactly one beat; workers scale ---------------------------------------------------------


def test_exactly_one_beat_in_every_shape() -> None:
    for shape, units in SHAPES.items():
        assert _roles(units()).count("beat") == 1, shape
    beat = _workload("tiercel-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    compose_beat = load_compose()["services"]["beat"]
    assert compose_beat.get("deploy", {}).get("replicas", 1) == 1
    assert "@" not in (SYSTEMD / "tiercel-beat.service").name  # not a template


def test_no_worker_embeds_beat() -> None:
    for unit in all_units():
        if unit.main is not None and unit.main.role == "worker":
            words = unit.main.words
            assert "-B" not in words and "--beat" not in words, unit.source


def test_compose_worker_scales() -> None:
    worker = load_compose()["services"]["worker"]
    # A fixed name, hostname or host port would collide on `--scale worker=N`.
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, key


def test_worker_node_names_are_unique_per_replica_and_probes_name_the_same_node() -> None:
    for unit in all_units():
        if unit.main is None or unit.main.role != "worker":
            continue
        name = unit.main.option("--hostname") or unit.main.option("-n")
        assert name is not None and "%h" in name, unit.source
        for check in unit.checks:
            if check.role == "health" and check.option("--node") is not None:
                assert check.option("--node") == name, check.source


# --- Redis policies --------------------------------------------------------------------------


def _redis_commands() -> dict[str, DeployCommand]:
    return {
        u.source: u.main
        for u in all_units()
        if u.main is not None and u.main.role == "redis-server"
    }


def test_broker_is_noeviction_and_cache_is_bounded_lru() -> None:
    commands = _redis_commands()
    assert {
        "compose.yaml broker",
        "compose.yaml cache",
        "k8s/redis.yaml tiercel-broker/redis",
        "k8s/redis.yaml tiercel-cache/redis",
    } <= set(commands)
    for source, command in commands.items():
        if "broker" in source:
            assert command.option("--maxmemory-policy") == "noeviction", source
        else:
            assert command.option("--maxmemory-policy") == "allkeys-lru", source
            assert command.option("--maxmemory"), source
        assert command.option("--requirepass"), source


def test_urls_point_broker_and_cache_at_their_own_servers() -> None:
    env = next(
        u.main.env
        for u in compose_units()
        if u.source == "compose.yaml worker" and u.main is not None
    )
    assert "@broker:" in env["TIERCEL_BROKER_URL"] and "@cache:" in env["TIERCEL_CACHE_URL"]
    k8s_env = container_env(_container("tiercel-worker"))
    assert "tiercel-broker" in k8s_env["TIERCEL_BROKER_URL"]
    assert "tiercel-cache" in k8s_env["TIERCEL_CACHE_URL"]


# --- settings and secrets --------------------------------------------------------------------


def test_every_shapes_settings_are_valid() -> None:
    for unit in all_units():
        if unit.main is not None and unit.main.program in ("celery", "tiercel"):
            env = unit.main.env
            Settings.from_env(env)  # raises SettingsError naming the variable
            assert env.get("TIERCEL_BROKER_URL"), unit.source


def test_k8s_settings_in_configmap_and_secrets_in_secret() -> None:
    config = next(doc for _p, doc in k8s_documents() if doc["kind"] == "ConfigMap")
    for key, value in config["data"].items():
        assert not key.endswith(("_URL", "_BACKEND", "PASSWORD", "AUTH", "KEYS")), key
        assert "://" not in str(value), key
    for _path, workload in pod_templates():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                if item["name"].endswith(("_URL", "_BACKEND", "PASSWORD", "AUTH")):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    # Real secrets are created out of band; autoscalers are a choice of one.
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not any(r.startswith("autoscaling") for r in kustomization["resources"])


def test_flower_requires_authentication_everywhere() -> None:
    flower = load_compose()["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])
    env = container_env(_container("tiercel-flower"))
    assert ":" in env["FLOWER_BASIC_AUTH"]
    flower_item = next(
        i for i in _container("tiercel-flower")["env"] if i["name"] == "FLOWER_BASIC_AUTH"
    )
    assert "secretKeyRef" in flower_item["valueFrom"]
    unit = read_unit_file(SYSTEMD / "tiercel-flower.service")["Service"]
    assert any("flower.env" in f for f in unit["EnvironmentFile"])
    assert "FLOWER_BASIC_AUTH" in read_env_file(DEPLOY / "flower.env.example")
    for unit_ in all_units():
        if unit_.main is not None and unit_.main.role == "flower":
            assert "FLOWER_BASIC_AUTH" in unit_.main.env, unit_.source
            assert "FLOWER_UNAUTHENTICATED_API" not in unit_.main.env, unit_.source


def test_readme_warns_that_flower_metrics_and_healthcheck_are_open() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "/metrics" in readme and "/healthcheck" in readme
    assert "unauthenticated" in readme


# --- shutdown, probes, disruption, autoscaling --------------------------------------------


def test_worker_grace_period_covers_the_longest_task() -> None:
    for unit in all_units():
        if unit.main is None or unit.main.role != "worker":
            continue
        if unit.source.startswith("Procfile"):
            continue  # a Procfile runner has no per-process stop timeout to set
        assert unit.grace_seconds is not None, unit.source
        assert unit.grace_seconds >= _time_limit(unit.main.env), unit.source
    worker_unit = read_unit_file(SYSTEMD / "tiercel-worker@.service")["Service"]
    assert worker_unit["KillMode"] == ["mixed"]  # SIGTERM the main process only


def test_k8s_workers_are_probed_with_tiercel_health() -> None:
    container = _container("tiercel-worker")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[kind]["exec"]["command"]
        assert command[:2] == ["tiercel", "health"], kind
        timeout = float(command[command.index("--timeout") + 1])
        assert timeout < container[kind]["timeoutSeconds"], kind
    assert "--readiness" in container["readinessProbe"]["exec"]["command"]
    assert "--liveness" in container["livenessProbe"]["exec"]["command"]


def test_pdb_and_services_select_existing_pods() -> None:
    labels = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for _p, doc in pod_templates()
    }

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= pod.items() for pod in labels.values())

    kinds = {doc["kind"] for _p, doc in k8s_documents()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "ScaledObject",
        "HorizontalPodAutoscaler",
    } <= kinds
    for _path, doc in k8s_documents():
        if doc["kind"] == "Service":
            assert selects(doc["spec"]["selector"]), doc["metadata"]["name"]
        if doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels["tiercel-worker"].items()
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert (
                doc["spec"]["selector"]["matchLabels"].items()
                <= doc["spec"]["template"]["metadata"]["labels"].items()
            )


def test_autoscalers_target_the_worker_queue() -> None:
    docs = {doc["kind"]: doc for _p, doc in k8s_documents()}
    scaled = docs["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "tiercel-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "celery"  # Celery's default queue
    auth = docs["TriggerAuthentication"]["spec"]["secretTargetRef"][0]
    assert auth["name"] == "tiercel-secrets"
    assert trigger["authenticationRef"]["name"] == docs["TriggerAuthentication"]["metadata"]["name"]
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tiercel-worker",
    }
    secret = docs["Secret"]["stringData"]
    for _path, workload in pod_templates():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret, ref


def test_example_files_exist_for_every_environment_file() -> None:
    for path in sorted(SYSTEMD.glob("*.service")):
        for env_file in read_unit_file(path)["Service"].get("EnvironmentFile", []):
            name = Path(env_file.lstrip("-")).name
            assert (DEPLOY / f"{name}.example").exists(), env_file
