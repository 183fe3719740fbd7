"""Reading deploy/: every command line the deployment files run, parsed from the files.

The deploy tests never keep a second copy of a command line: they parse the
compose file, the Kubernetes manifests, the systemd units and the Procfile,
apply each format's own expansion (compose ``${VAR}`` interpolation from
``.env.example``, Kubernetes ``$(VAR)`` in command/args, systemd ``%``
specifiers, the Procfile's shell), and hand back :class:`DeployCommand` rows.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
#: Where the systemd units expect tiercel's virtualenv on a bare host.
HOST_VENV_BIN = "/opt/tiercel/.venv/bin/"
#: Long-running roles; everything else is a one-shot check.
SERVICES = ("worker", "beat", "flower", "exporter", "redis-server")


@dataclass(frozen=True)
class DeployCommand:
    """One command line a deployment file runs, after the file format's own expansion."""

    source: str  # "compose.yaml worker healthcheck", "k8s/worker.yaml ..."
    argv: tuple[str, ...]  # for shell lines: ("/bin/sh", "-c", line)
    env: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    shell: bool = False

    @property
    def words(self) -> list[str]:
        """The command's words (a shell line split as the shell would, minus ``exec``)."""
        words = shlex.split(self.argv[2]) if self.shell else list(self.argv)
        return words[1:] if words[:1] == ["exec"] else words

    @property
    def program(self) -> str:
        """The executable's base name: celery, tiercel, python, redis-server, ..."""
        return self.words[0].rsplit("/", 1)[-1]

    @property
    def role(self) -> str:
        """worker, beat, flower, exporter, health, redis-server, http-check or external."""
        words = self.words
        if self.program == "celery":
            return next((w for w in words if w in ("worker", "beat", "flower")), "celery")
        if self.program == "tiercel":
            return words[1]
        if self.program == "python" and "urllib.request" in " ".join(words):
            return "http-check"
        if self.program == "redis-server":
            return "redis-server"
        return "external"

    def option(self, name: str) -> str | None:
        """The value of ``--name VALUE`` or ``--name=VALUE`` in the words, if present."""
        words = self.words
        for index, word in enumerate(words):
            if word == name and index + 1 < len(words):
                return words[index + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
        return None


@dataclass(frozen=True)
class HttpProbe:
    """A Kubernetes httpGet probe: GET ``path`` on the container's ``port``."""

    source: str
    path: str
    port: int


@dataclass
class Unit:
    """One service as a file declares it: its command plus the checks that run beside it."""

    source: str
    main: DeployCommand | None
    checks: list[DeployCommand] = field(default_factory=list)
    http_probes: list[HttpProbe] = field(default_factory=list)
    grace_seconds: float | None = None


# --- compose -------------------------------------------------------------------------------

_COMPOSE_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
    r"|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blanks skipped), as compose, systemd and honcho read."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate_compose(text: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` rules."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        value = variables.get(name)
        operator, argument = match.group(2), match.group(3)
        if operator in (":-", "-"):
            return value if value else argument
        if operator in (":?", "?") and not value:
            raise ValueError(f"compose variable {name} is unset: {argument}")
        return value or ""

    return _COMPOSE_VAR.sub(replace, text)


def load_compose() -> dict[str, Any]:
    """deploy/compose.yaml interpolated with deploy/.env.example."""
    text = (DEPLOY / "compose.yaml").read_text()
    return yaml.safe_load(interpolate_compose(text, read_env_file(DEPLOY / ".env.example")))


def _compose_words(value: Any) -> tuple[tuple[str, ...], bool]:
    if isinstance(value, str):
        return ("/bin/sh", "-c", value), True
    words = [str(word) for word in value]
    if words[0] == "CMD":
        return tuple(words[1:]), False
    if words[0] == "CMD-SHELL":
        return ("/bin/sh", "-c", words[1]), True
    return tuple(words), False


def _duration(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def compose_units() -> list[Unit]:
    """One unit per compose service."""
    units = []
    for name, service in load_compose()["services"].items():
        env = {str(k): str(v) for k, v in (service.get("environment") or {}).items()}
        source = f"compose.yaml {name}"
        main = None
        if "command" in service:
            argv, shell = _compose_words(service["command"])
            main = DeployCommand(source, argv, env, shell)
        unit = Unit(source, main)
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            argv, shell = _compose_words(test)
            unit.checks.append(DeployCommand(f"{source} healthcheck", argv, env, shell))
        if "stop_grace_period" in service:
            unit.grace_seconds = _duration(str(service["stop_grace_period"]))
        units.append(unit)
    return units


# --- Kubernetes ----------------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every document of every manifest under deploy/k8s (autoscaling included)."""
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path, document))
    return documents


def _k8s_sources() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    config_maps: dict[str, dict[str, str]] = {}
    secrets: dict[str, dict[str, str]] = {}
    for _path, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            config_maps[doc["metadata"]["name"]] = dict(doc.get("data") or {})
        elif doc["kind"] == "Secret":
            secrets[doc["metadata"]["name"]] = dict(doc.get("stringData") or {})
    return config_maps, secrets


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, resolving ConfigMap and (example) Secret references."""
    config_maps, secrets = _k8s_sources()
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            env[item["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = config_maps[key["name"]][key["key"]]
    return env


def expand_k8s(word: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args (``$$`` escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        word,
    )


def pod_templates() -> list[tuple[Path, dict[str, Any]]]:
    """(file, workload) for every Deployment and StatefulSet."""
    return [
        (path, doc) for path, doc in k8s_documents() if doc["kind"] in ("Deployment", "StatefulSet")
    ]


def k8s_units() -> list[Unit]:
    """One unit per container of every workload."""
    units = []
    for path, workload in pod_templates():
        spec = workload["spec"]["template"]["spec"]
        for container in spec["containers"]:
            env = container_env(container)
            source = (
                f"k8s/{path.relative_to(K8S)} {workload['metadata']['name']}/{container['name']}"
            )
            words = [*container.get("command", []), *container.get("args", [])]
            main = (
                DeployCommand(source, tuple(expand_k8s(str(w), env) for w in words), env)
                if words
                else None
            )
            unit = Unit(source, main, grace_seconds=spec.get("terminationGracePeriodSeconds"))
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if not probe:
                    continue
                if "exec" in probe:
                    # Kubernetes runs exec probes as given: no $(VAR) expansion there.
                    argv = tuple(str(w) for w in probe["exec"]["command"])
                    shell = argv[:2] in (("sh", "-c"), ("/bin/sh", "-c"))
                    unit.checks.append(DeployCommand(f"{source} {kind}", argv, env, shell))
                elif "httpGet" in probe:
                    port = probe["httpGet"]["port"]
                    unit.http_probes.append(
                        HttpProbe(
                            f"{source} {kind}", probe["httpGet"]["path"], int(ports.get(port, port))
                        )
                    )
            units.append(unit)
    return units


# --- systemd and Procfile ------------------------------------------------------------------


def read_unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise ValueError(f"{path.name}:{number}: not a section or key=value line")
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def expand_systemd(text: str, instance: str) -> str:
    """The systemd specifiers our units use: %i (instance) and %% (a literal %)."""

    def replace(match: re.Match[str]) -> str:
        spec = match.group(1)
        if spec == "%":
            return "%"
        if spec in ("i", "I"):
            return instance
        raise ValueError(f"systemd specifier %{spec} is not expected in tiercel's units")

    return re.sub(r"%(.)", replace, text)


def host_env_file(path: str) -> Path:
    """The example in deploy/ behind an /etc/tiercel/NAME EnvironmentFile."""
    return DEPLOY / (Path(path.lstrip("-")).name + ".example")


def systemd_units(instance: str = "1") -> list[Unit]:
    """One unit per service file; templates are instantiated as ``instance``."""
    units = []
    for path in sorted(SYSTEMD.glob("*.service")):
        service = read_unit_file(path)["Service"]
        env: dict[str, str] = {}
        for env_file in service.get("EnvironmentFile", []):
            env.update(read_env_file(host_env_file(env_file)))
        source = f"systemd/{path.name}"
        argv = tuple(shlex.split(expand_systemd(service["ExecStart"][-1], instance)))
        grace = service.get("TimeoutStopSec")
        units.append(
            Unit(
                source,
                DeployCommand(source, argv, env),
                grace_seconds=float(grace[-1]) if grace else None,
            )
        )
    return units


def procfile_units() -> list[Unit]:
    """One unit per Procfile line; each line runs under /bin/sh as a Procfile runner does."""
    env = {
        **read_env_file(DEPLOY / "tiercel.env.example"),
        **read_env_file(DEPLOY / "flower.env.example"),
    }
    units = []
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        source = f"Procfile {name.strip()}"
        units.append(
            Unit(source, DeployCommand(source, ("/bin/sh", "-c", command.strip()), env, shell=True))
        )
    return units


def all_units() -> list[Unit]:
    """Every unit of every deployment shape."""
    return [*compose_units(), *k8s_units(), *systemd_units(), *procfile_units()]
