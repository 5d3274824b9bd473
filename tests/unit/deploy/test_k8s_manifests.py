"""deploy/k8s as `kubectl kustomize` renders it (base, overlays cpu and gpu): valid offline,
an object for every service, a KEDA ScaledObject for every generation pool, and the settings
the manifests pass are ones the services read."""
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml

from deploy.k8s.check import K8S_DIR, TARGETS, problems, render
from services.auth.config import AuthSettings
from services.controlplane.config import ControlPlaneSettings
from services.controlplane.envoy_binary import envoy_binary_path
from services.controlplane.scaling_config import load_scaling_config
from services.generation.config import GenerationSettings
from services.router.config import RouterSettings
from services.moderation.config import ModerationSettings
from services.retrieval.config import RetrievalSettings
from tests.unit.deploy.network_policy import Pod, allowed

REPO = Path(__file__).resolve().parents[3]
SERVICES = ("controlplane", "envoy", "router", "auth", "moderation", "retrieval", "generation")
SETTINGS = {"controlplane": ControlPlaneSettings, "router": RouterSettings,
            "auth": AuthSettings, "moderation": ModerationSettings,
            "retrieval": RetrievalSettings,
            "generation": GenerationSettings}
NAME = "app.kubernetes.io/name"
MODEL = "meshllm.dev/model"


@cache
def rendered_yaml(target: str) -> str:
    return yaml.safe_dump_all(render(target))


def objects_of(target: str) -> list[dict]:
    """A fresh copy each time: tests may change what they get."""
    return list(yaml.safe_load_all(rendered_yaml(target)))


@pytest.fixture(params=TARGETS)
def rendered(request) -> list[dict]:
    return objects_of(request.param)


def of_kind(objects, kind: str) -> list[dict]:
    return [item for item in objects if item["kind"] == kind]


def named(objects, kind: str, name: str) -> dict:
    (found,) = [item for item in of_kind(objects, kind) if item["metadata"]["name"] == name]
    return found


def labels(item) -> dict:
    return item["metadata"].get("labels") or {}


def containers(deployment) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def env(container) -> dict[str, dict]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def config_file(objects, prefix: str) -> str:
    (config_map,) = [c for c in of_kind(objects, "ConfigMap")
                     if c["metadata"]["name"].startswith(prefix)]
    (text,) = config_map["data"].values()
    return text


def test_every_object_is_valid_against_the_kubernetes_schemas_and_kedas_crd(rendered):
    assert [problem for item in rendered for problem in problems(item)] == []


def test_the_check_refuses_a_misspelt_field_and_a_scaled_object_without_a_trigger_type():
    gpu = objects_of("overlays/gpu")
    deployment = named(gpu, "Deployment", "router")
    containers(deployment)[0]["readinessProbe"]["grcp"] = {"port": 50051}
    assert "'grcp' was unexpected" in problems(deployment)[0]
    scaled = named(gpu, "ScaledObject", "generation-tiny-llama")
    del scaled["spec"]["triggers"][0]["type"]
    assert "'type' is a required property" in problems(scaled)[0]


def test_every_service_has_a_deployment_and_a_service(rendered):
    for kind in ("Deployment", "Service"):
        assert {labels(item).get(NAME) for item in of_kind(rendered, kind)} == set(SERVICES)


def test_each_generation_pool_has_a_scaled_object_that_scales_it_from_zero_on_the_control_plane(
        rendered):
    pools = [d for d in of_kind(rendered, "Deployment") if labels(d)[NAME] == "generation"]
    assert pools
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(rendered, "ScaledObject")}
    controlplane = named(rendered, "Service", "controlplane")
    (grpc_port,) = [p["port"] for p in controlplane["spec"]["ports"] if p["name"] == "grpc"]
    scaling = load_scaling_config_from(rendered)
    for pool in pools:
        model = labels(pool)[MODEL]
        spec = scaled[pool["metadata"]["name"]]["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] in ("external", "external-push")
        assert trigger["metadata"] == {
            "scalerAddress": f"controlplane.{controlplane['metadata']['namespace']}.svc:"
                             f"{grpc_port}", "pool": model}
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] == scaling.pools[model].max_replicas
        (container,) = containers(pool)
        assert env(container)["MESHLLM_GENERATION_SERVED_MODEL_NAME"]["value"] == model


def load_scaling_config_from(objects):
    """The control plane's settings from the ConfigMap it mounts, loaded as it loads them."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "scaling.toml"
        path.write_text(config_file(objects, "controlplane-scaling"))
        return load_scaling_config(path)


def test_router_and_auth_scale_on_cpu_within_the_bounds_of_the_scaling_config(rendered):
    scaling = load_scaling_config_from(rendered)
    for service in ("router", "auth"):
        hpa = named(rendered, "HorizontalPodAutoscaler", service)["spec"]
        assert hpa["scaleTargetRef"]["name"] == service
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert hpa["maxReplicas"] == scaling.for_service(service).max_replicas
        assert "replicas" not in named(rendered, "Deployment", service)["spec"]


@pytest.mark.parametrize("service", ["moderation", "retrieval"])
def test_a_service_on_a_volume_runs_the_one_replica_it_allows_as_the_scaling_config_says(
        rendered, service):
    bounds = load_scaling_config_from(rendered).for_service(service)
    deployment = named(rendered, "Deployment", service)["spec"]
    assert deployment["replicas"] == bounds.min_replicas == bounds.max_replicas == 1
    assert deployment["strategy"]["type"] == "Recreate"


def test_every_pod_runs_unprivileged_on_a_read_only_root_with_requests_limits_and_probes(
        rendered):
    for deployment in of_kind(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound])
            assert {"readinessProbe", "livenessProbe"} <= set(container)
        assert disruption_budget_for(rendered, deployment)


def disruption_budget_for(objects, deployment) -> dict:
    selector = deployment["spec"]["selector"]["matchLabels"]
    (budget,) = [b for b in of_kind(objects, "PodDisruptionBudget")
                 if b["spec"]["selector"]["matchLabels"] == selector]
    return budget


def test_the_mesh_services_are_probed_with_grpc_health_on_their_grpc_port(rendered):
    for deployment in of_kind(rendered, "Deployment"):
        if labels(deployment)[NAME] == "envoy":
            continue
        (container,) = containers(deployment)
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_gpu_overlay_gives_a_generation_replica_a_gpu(target):
    for deployment in of_kind(objects_of(target), "Deployment"):
        limits = containers(deployment)[0]["resources"]["limits"]
        gpu = target == "overlays/gpu" and labels(deployment)[NAME] == "generation"
        assert limits.get("nvidia.com/gpu") == (1 if gpu else None)


def test_every_meshllm_setting_a_manifest_passes_is_one_its_service_reads(rendered, monkeypatch):
    for deployment in of_kind(rendered, "Deployment"):
        service = labels(deployment)[NAME]
        if service not in SETTINGS:
            continue
        settings = SETTINGS[service]
        known = {f"MESHLLM_{service.upper()}_{name.upper()}" for name in settings.model_fields}
        for field in settings.model_fields.values():
            known.update(getattr(field.validation_alias, "choices", []))
        variables = env(containers(deployment)[0])
        for name, variable in variables.items():
            if name.startswith("MESHLLM_"):
                assert name in known, f"{service}: {settings.__name__} reads no {name}"
                monkeypatch.setenv(name, variable.get("value", "from-the-cluster"))
        if service == "controlplane":
            settings()  # every value parses (ports are numbers, flags are booleans)
        else:
            settings(host="127.0.0.1")


def test_the_control_plane_may_read_endpointslices_and_nothing_else(rendered):
    (rule,) = named(rendered, "Role", "controlplane-endpointslices")["rules"]
    assert rule == {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"]}
    binding = named(rendered, "RoleBinding", "controlplane-endpointslices")
    account = named(rendered, "Deployment", "controlplane")["spec"]["template"]["spec"][
        "serviceAccountName"]
    assert [s["name"] for s in binding["subjects"]] == [account]


def test_the_services_discovery_reads_carry_its_labels_and_a_grpc_port(rendered):
    discovered = [s for s in of_kind(rendered, "Service")
                  if labels(s).get("meshllm.dev/discovered") == "true"]
    assert {labels(s)[NAME] for s in discovered} == {"router", "auth", "moderation",
                                                      "retrieval", "generation"}
    for service in discovered:
        assert "grpc" in {port["name"] for port in service["spec"]["ports"]}
        if labels(service)[NAME] == "generation":
            assert labels(service)[MODEL] == service["spec"]["selector"][MODEL]


def test_the_envoy_bootstrap_is_valid_and_reaches_the_control_plane_as_make_up_does(
        rendered, tmp_path):
    text = config_file(rendered, "envoy-bootstrap")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    result = subprocess.run(
        [str(envoy_binary_path()), "--mode", "validate", "-c", str(path),
         "--use-dynamic-base-id", "--disable-hot-restart", "-l", "error"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    ours = yaml.safe_load(text)
    local = yaml.safe_load((REPO / "deploy" / "envoy" / "bootstrap.yaml").read_text())
    assert ours["dynamic_resources"] == local["dynamic_resources"]
    assert ours["node"] == local["node"]
    (cluster,) = [c for c in ours["static_resources"]["clusters"] if c["name"] == "controlplane"]
    (template,) = local["static_resources"]["clusters"]
    assert cluster["typed_extension_protocol_options"] == \
        template["typed_extension_protocol_options"]


def test_the_images_run_as_an_unprivileged_user():
    for dockerfile in (REPO / "deploy" / "docker").glob("*.Dockerfile"):
        users = [line.split()[1] for line in dockerfile.read_text().splitlines()
                 if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), dockerfile.name


def test_the_kustomizations_list_every_manifest_beside_them():
    base = K8S_DIR / "base"
    listed = set(yaml.safe_load((base / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in base.glob("*.yaml")} - {"kustomization.yaml",
                                                                     "envoy-bootstrap.yaml"}


def mesh_pods(objects) -> dict[str, Pod]:
    """Each service's pod, as its Deployment's template makes it."""
    pods = {}
    for deployment in of_kind(objects, "Deployment"):
        template = deployment["spec"]["template"]
        ports = {port["name"]: port["containerPort"]
                 for container in template["spec"]["containers"]
                 for port in container.get("ports", [])}
        pods[labels(deployment)[NAME]] = Pod(deployment["metadata"]["namespace"],
                                             template["metadata"]["labels"], ports)
    return pods


OUTSIDER = Pod("apps", {"app": "anything"}, {})
KEDA = Pod("keda", {"app": "keda-operator"}, {})
PROMETHEUS = Pod("monitoring", {"app": "prometheus"}, {})


def test_network_policies_let_only_envoy_reach_replicas_and_only_the_mesh_and_keda_the_control_plane(
        rendered):
    policies = of_kind(rendered, "NetworkPolicy")
    pods = mesh_pods(rendered)

    def may(source: Pod, target: str, port: str) -> bool:
        return allowed(policies, source, pods[target], port)

    assert may(OUTSIDER, "envoy", "public")
    for target, port in (("envoy", "mesh"), ("controlplane", "grpc"), ("router", "grpc"),
                         ("auth", "grpc"), ("moderation", "grpc"), ("retrieval", "grpc"),
                         ("generation", "grpc")):
        assert not may(OUTSIDER, target, port), (target, port)
    assert may(KEDA, "controlplane", "grpc") and not may(KEDA, "generation", "grpc")
    for replica in ("router", "auth", "moderation", "retrieval", "generation"):
        assert may(pods["envoy"], replica, "grpc")
        assert may(pods[replica], "controlplane", "grpc")
        assert may(pods[replica], "envoy", "mesh")
    assert not may(pods["router"], "generation", "grpc")  # through Envoy's mesh listener only
    assert not may(pods["generation"], "auth", "grpc")
    assert may(pods["envoy"], "controlplane", "grpc")
    assert not may(pods["router"], "moderation", "grpc")  # through Envoy's mesh listener only
    assert not may(pods["router"], "retrieval", "grpc")
    for service in ("controlplane", "router", "auth", "moderation", "retrieval", "generation"):
        assert may(PROMETHEUS, service, "metrics")
