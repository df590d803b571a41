"""deploy/ as a platform team applies it: every Kubernetes manifest valid against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors), the pieces
wired to each other, the gateway's own configuration in them accepted by the gateway, and
the Consul, Prometheus and container definitions well-formed. (The Dockerfile's text is
checked here; the image was built by hand with podman over locally made base images, the
registry being unreachable from here.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.app import LIVENESS_SERVICE
from gateway.settings import GatewaySettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = "1.31.0"


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        (document,) = list(yaml.safe_load_all(path.read_text()))
        found[path.name] = document
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests().values() if m["kind"] == kind]


@pytest.mark.parametrize("name", sorted(manifests()))
def test_each_manifest_is_valid_against_the_kubernetes_schemas(name: str) -> None:
    kubernetes_validate.validate(manifests()[name], KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(manifests())
    namespaces = {m["metadata"].get("namespace") for m in manifests().values()} - {None}
    assert namespaces == {kustomization["namespace"]}


def test_the_gateway_deployment_is_probed_disrupted_scaled_and_exposed_as_it_should() -> None:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "triton-gateway"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (pdb,) = of_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 8001, f"{probe}: grpc.health.v1"
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert "service" not in container["readinessProbe"]["grpc"]
    token = next(e for e in container["env"] if e["name"] == "GATEWAY_ADMIN__TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    # The admin port is on no Service and listens on the pod's localhost only.
    config = gateway_config()
    admin_port = config.admin.listen_port(config.server.port)
    for service in of_kind("Service"):
        assert admin_port not in [p["port"] for p in service["spec"]["ports"]]
    assert config.admin.host == "127.0.0.1"


def gateway_config() -> GatewaySettings:
    (config_map,) = of_kind("ConfigMap")
    values = yaml.safe_load(config_map["data"]["gateway.yaml"])
    return GatewaySettings.model_validate(values)


def test_the_gateway_discovers_the_triton_fleet_through_its_headless_service() -> None:
    config = gateway_config()
    (triton,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "triton"]
    assert triton["spec"]["clusterIP"] == "None"
    port = next(p for p in triton["spec"]["ports"] if p["name"] == "grpc")
    namespace = triton["metadata"]["namespace"]
    assert config.discovery.source == "dns" and config.discovery.dns is not None
    assert config.discovery.dns.record == "SRV"
    assert config.discovery.dns.name == (
        f"_{port['name']}._tcp.{triton['metadata']['name']}.{namespace}.svc.cluster.local"
    )
    assert config.admin.state_store == "consul", "replicas (the HPA) share one traffic state"


def test_the_triton_fleet_loads_explicitly_on_gpus_and_has_time_to_start() -> None:
    (statefulset,) = of_kind("StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--model-control-mode=explicit" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "engines build slowly"
    assert statefulset["spec"]["serviceName"] == "triton"


def test_consul_prometheus_and_the_image_definitions() -> None:
    triton = json.loads((DEPLOY / "consul" / "triton.json").read_text())["service"]
    assert triton["name"] == "triton" and triton["port"] == 8001
    assert any(c.get("http", "").endswith("/v2/health/ready") for c in triton["checks"])
    consul_config = GatewaySettings.model_validate(
        yaml.safe_load((DEPLOY / "consul" / "gateway.yaml").read_text())
    )
    assert consul_config.discovery.consul is not None
    assert consul_config.discovery.consul.service == triton["name"]
    gateway = json.loads((DEPLOY / "consul" / "gateway-service.json").read_text())["service"]
    assert gateway["checks"][0]["grpc"].endswith(":8001")
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"triton-gateway", "triton"} <= jobs
    dockerfile = (DEPLOY / "Dockerfile").read_text().splitlines()
    stages = [line for line in dockerfile if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage: the edge is built in the image"
    assert any("cargo build --release --locked" in line for line in dockerfile)
    (user,) = [line for line in dockerfile if line.startswith("USER ")]
    assert not user.split()[1].startswith(("0", "root"))
