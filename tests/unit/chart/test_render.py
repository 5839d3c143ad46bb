"""The chart renders and lints under every matrix case, and every object it renders is one the API server accepts."""

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from musicrl.bus.local_server import nats_server_binary
from musicrl.rollout.isvc_patches import canary_name, validate_isvc
from tests.unit.chart.rendering import (
    CHART_DIR,
    KUBE_VERSION,
    MATRIX,
    NAMESPACE,
    chart,
    pod_spec,
    render,
    render_case,
    values_file,
    with_values,
)
from tests.utils.kserve_models import attribute_maps


# Custom resources: kubernetes-validate holds only the built-in API groups' schemas. InferenceServices are checked
# against the project's own schema instead; the others have none here, so only their presence is asserted.
NOT_IN_KUBERNETES_SCHEMAS = {
    "InferenceService": "KServe CRD (serving.kserve.io/v1beta1): the project's own schema, and KServe's API models",
    "ServingRuntime": "KServe CRD (serving.kserve.io/v1alpha1): checked against KServe's API models below",
    "ServiceMonitor": "Prometheus Operator CRD (monitoring.coreos.com/v1): no schema here",
    "PodMonitor": "Prometheus Operator CRD (monitoring.coreos.com/v1): no schema here",
    "PrometheusRule": "Prometheus Operator CRD (monitoring.coreos.com/v1): no schema here",
    "HTTPRoute": "Gateway API CRD (gateway.networking.k8s.io/v1): no schema here",
}


def test_matrix_covers_the_cases_the_issue_names() -> None:
    assert set(MATRIX) >= {
        "minimal",
        "external-nats",
        "ingress-off",
        "gpu-off",
        "canary-standard",
        "canary-serverless",
        "production",
    }


@pytest.mark.parametrize("case", MATRIX)
def test_strict_lint_finds_nothing(case: str) -> None:
    report = helm.lint(CHART_DIR, values_file(case), strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
    assert report["errors"] == []
    # severity 1 is info ("icon is recommended"); 2 warning and 3 error fail a strict lint
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", MATRIX)
def test_every_object_validates(case: str) -> None:
    rendered = render_case(case)
    assert rendered.objects
    for obj in rendered.objects:
        kind = obj["kind"]
        if kind == "InferenceService":
            validate_isvc(obj)
        elif kind not in NOT_IN_KUBERNETES_SCHEMAS:
            kubernetes_validate.validate(obj, KUBE_VERSION.removeprefix("v"), strict=True)


@pytest.mark.parametrize("case", MATRIX)
def test_every_pod_is_hardened(case: str) -> None:
    rendered = render_case(case)
    pods = [
        (obj["metadata"]["name"], pod_spec(obj))
        for obj in rendered.objects
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "Pod")
    ]
    pods += [(obj["metadata"]["name"], predictor) for obj, predictor in _predictors(rendered.objects)]
    assert len(pods) >= 6
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        containers = pod.get("containers") or [pod["model"]]
        for container in containers:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{name}: a read-only root needs an emptyDir at /tmp"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], name


def _predictors(objects: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(InferenceService, predictor) for every stable and canary predictor."""
    found = []
    for obj in objects:
        if obj["kind"] == "InferenceService":
            found.append((obj, obj["spec"]["predictor"]))
            found += [(obj, canary["predictor"]) for canary in obj["spec"].get("canary", [])]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_defaults_bundle_a_single_nats_server_and_provision_it() -> None:
    rendered = render_case("minimal")
    nats = rendered.workload("nats")
    assert nats["spec"]["replicas"] == 1
    assert nats["spec"]["serviceName"].endswith("-headless")
    assert nats["spec"]["template"]["spec"]["containers"][0]["image"].startswith("docker.io/nats:")
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    conf = rendered.one("ConfigMap", "demo-musicrl-nats")["data"]["nats.conf"]
    assert "jetstream {" in conf and "store_dir: /data/jetstream" in conf
    assert "cluster {" not in conf  # one server: no routes
    (job,) = rendered.of_kind("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert pod_spec(job)["containers"][0]["command"] == ["musicrl", "bus", "provision"]
    assert [s for s in rendered.of_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert not rendered.of_kind("Ingress")  # off unless asked for


def test_production_runs_a_three_node_jetstream_cluster() -> None:
    rendered = render_case("production")
    assert rendered.workload("nats")["spec"]["replicas"] == 3
    conf = rendered.one("ConfigMap", "demo-musicrl-nats")["data"]["nats.conf"]
    routes = [line.strip() for line in conf.splitlines() if line.strip().startswith("nats://")]
    assert routes == [
        f"nats://demo-musicrl-nats-{i}.demo-musicrl-nats-headless.{NAMESPACE}.svc.cluster.local:6222" for i in range(3)
    ]
    assert rendered.one("ConfigMap", "demo-musicrl-config")["data"]["MUSICRL_REPLICAS"] == "3"
    (ingress,) = rendered.of_kind("Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "music.example.com"
    assert ingress["spec"]["tls"][0]["secretName"] == "music-example-com-tls"
    image = pod_spec(rendered.workload("gateway"))["containers"][0]["image"]
    assert image == "registry.example.com/musicrl/musicrl-gateway@sha256:" + "0123456789abcdef" * 4
    assert {obj["kind"] for obj in rendered.objects} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert (
        len([i for i in rendered.of_kind("InferenceService") if i["metadata"]["name"] != "demo-musicrl-generator"])
        == 3
    )


def test_external_nats_renders_no_server_and_takes_the_url_from_its_secret() -> None:
    rendered = render_case("external-nats")
    assert not rendered.of_kind("StatefulSet")
    for component in ("gateway", "recorder", "rollout"):
        env = _env(pod_spec(rendered.workload(component))["containers"][0])
        assert env["MUSICRL_NATS_URL"] == {"secretKeyRef": {"name": "musicrl-nats", "key": "url"}}, component


def test_gateway_calls_the_stable_predictor_service_and_reads_secrets_by_reference() -> None:
    rendered = render_case("production")
    container = pod_spec(rendered.workload("gateway"))["containers"][0]
    env = _env(container)
    assert env["MUSICRL_GENERATOR_URL"] == f"demo-musicrl-generator-predictor.{NAMESPACE}.svc.cluster.local:80"
    assert env["MUSICRL_SECRET_KEY"] == {"secretKeyRef": {"name": "musicrl-gateway", "key": "secret-key"}}
    assert env["MUSICRL_API_KEYS_FILE"] == "/etc/musicrl/api-keys/api-keys.json"
    assert {"secretRef": {"name": "musicrl-s3"}} in container["envFrom"]
    assert not rendered.of_kind("Secret")  # the chart never makes a secret a restart would change
    # KServe's storage initializer finds the object-store credentials through the model servers' account
    generator = rendered.one("InferenceService", "demo-musicrl-generator")
    account = rendered.one("ServiceAccount", generator["spec"]["predictor"]["serviceAccountName"])
    assert account["secrets"] == [{"name": "musicrl-s3"}]


def test_gpu_off_requests_no_gpu_and_runs_float32_with_threads_from_the_cpu_limit() -> None:
    isvc = render_case("gpu-off").one("InferenceService", "demo-musicrl-generator")
    model = isvc["spec"]["predictor"]["model"]
    assert "nvidia.com/gpu" not in model["resources"]["limits"]
    assert "nodeSelector" not in isvc["spec"]["predictor"]
    env = _env(model)
    assert (env["MUSICRL_DEVICE"], env["MUSICRL_DTYPE"]) == ("cpu", "float32")
    assert env["OMP_NUM_THREADS"] == "2"  # a 1500m limit rounds up to 2 whole CPUs


def test_gpu_on_by_default_on_the_gpu_pool() -> None:
    predictor = render_case("minimal").one("InferenceService", "demo-musicrl-generator")["spec"]["predictor"]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["nodeSelector"] == {"musicrl.io/pool": "gpu"}
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert _env(predictor["model"])["OMP_NUM_THREADS"] == "4"  # the default CPU limit
    assert predictor["model"]["runtime"] == "demo-musicrl-generator"  # the platform's own runtime by default
    assert render_case("production").one("InferenceService", "demo-musicrl-generator")["spec"]["predictor"]["model"][
        "env"
    ][-1] == {"name": "OMP_NUM_THREADS", "value": "6"}  # an explicit torchThreads wins


def test_standard_canary_is_a_spec_canary_entry() -> None:
    isvc = render_case("canary-standard").one("InferenceService", "demo-musicrl-generator")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://musicrl/policies/stable"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    (canary,) = isvc["spec"]["canary"]
    assert canary["trafficPercent"] == 20
    assert canary["predictor"]["name"] == "v7"
    assert canary["predictor"]["minReplicas"] == 1
    assert "maxReplicas" not in canary["predictor"]  # KServe refuses autoscaling fields on canaries
    assert canary["predictor"]["model"]["storageUri"] == "s3://musicrl/policies/v7"


def test_serverless_canary_is_canary_traffic_percent_with_tag_routing() -> None:
    isvc = render_case("canary-serverless").one("InferenceService", "demo-musicrl-generator")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    assert annotations["serving.kserve.io/enable-tag-routing"] == "true"
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://musicrl/policies/v7"  # the new revision
    assert "canary" not in isvc["spec"]


def test_rollout_controller_is_one_replica_acting_on_the_generator() -> None:
    rendered = render_case("canary-serverless")
    deployment = rendered.workload("rollout")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = _env(pod_spec(deployment)["containers"][0])
    assert env["MUSICRL_TARGET"] == "kserve"
    assert env["MUSICRL_KSERVE_NAMESPACE"] == NAMESPACE
    assert env["MUSICRL_KSERVE_INFERENCE_SERVICE"] == "demo-musicrl-generator"
    assert env["MUSICRL_KSERVE_MODE"] == "serverless"
    assert env["MUSICRL_GENERATOR_MODEL_NAME"] == "generator"
    assert pod_spec(deployment)["serviceAccountName"] == "demo-musicrl-controller"


def test_the_controller_role_can_only_read_and_patch_inference_services() -> None:
    rendered = render_case("minimal")
    (role,) = rendered.of_kind("Role")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "verbs": ["get", "list", "watch", "patch"],
        }
    ]
    (binding,) = rendered.of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "demo-musicrl-controller", "namespace": NAMESPACE}
    ]
    assert not rendered.of_kind("ClusterRole")
    # only the controller's pod carries an API token
    for obj in rendered.objects:
        if (
            obj["kind"] in ("Deployment", "StatefulSet", "Job", "Pod")
            and obj["metadata"]["labels"]["app.kubernetes.io/component"] != "rollout"
        ):
            assert pod_spec(obj)["automountServiceAccountToken"] is False, obj["metadata"]["name"]


def test_helm_test_calls_gateway_readyz_and_generator_v2_ready() -> None:
    (pod,) = render_case("minimal").of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == [
        f"http://demo-musicrl-gateway.{NAMESPACE}.svc.cluster.local:80/readyz",
        f"http://demo-musicrl-generator-predictor.{NAMESPACE}.svc.cluster.local:80/v2/health/ready",
    ]


def test_notes_say_how_to_reach_the_page_and_mint_a_key() -> None:
    minimal, production = render_case("minimal").notes, render_case("production").notes
    assert "port-forward svc/demo-musicrl-gateway 8000:80" in minimal
    assert "port-forward" in render_case("ingress-off").notes
    assert not render_case("ingress-off").of_kind("Ingress")
    assert "https://music.example.com/" in production
    assert "musicrl apikey new --id" in minimal
    # the pipeline parameters that hand a run's candidate to this release's controller
    assert f"nats_url=nats://demo-musicrl-nats.{NAMESPACE}.svc.cluster.local:4222 stable_uri=serving" in minimal
    assert "nats_url=<your NATS URL>" in render_case("external-nats").notes


def test_observability_is_off_by_default_and_the_dashboard_is_for_the_sidecar() -> None:
    kinds = {obj["kind"] for obj in render_case("minimal").objects}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    dashboard = render_case("production").one("ConfigMap", "demo-musicrl-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["musicrl.json"])["panels"]
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for topic in ("latency", "throughput", "queue depth", "ingest", "recorder lag", "dead letters", "win rate"):
        assert topic in titles, topic
    assert all(target["expr"] for panel in panels for target in panel["targets"])
    alerts = {
        rule["alert"] for rule in render_case("production").of_kind("PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    }
    assert alerts == {
        "MusicRLGeneratorDown",
        "MusicRLRecorderLagGrowing",
        "MusicRLDeadLettersGrowing",
        "MusicRLCanaryRolledBack",
    }


@pytest.mark.parametrize("case", ["minimal", "production"])
def test_bundled_nats_config_is_one_nats_server_accepts(case: str, tmp_path: Path) -> None:
    conf = render_case(case).one("ConfigMap", "demo-musicrl-nats")["data"]["nats.conf"]
    # the pod's mount points, moved under tmp_path; nothing else changes
    conf = conf.replace("/data/jetstream", str(tmp_path / "jetstream")).replace("/var/run/nats", str(tmp_path))
    (tmp_path / "nats.conf").write_text(conf)
    checked = subprocess.run(
        [str(nats_server_binary()), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env={"SERVER_NAME": "demo-musicrl-nats-0"},  # the StatefulSet sets it from the pod's name
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "max_file_store: 10G\n" in conf or "max_file_store: 100G\n" in conf  # decimal units, below the PVC


def _unknown_fields(doc: Any, type_name: str, path: str) -> list[str]:
    """Fields of ``doc`` that the API model ``type_name`` (KServe's or Kubernetes' generated client) lacks."""
    if type_name.startswith("list[") and isinstance(doc, list):
        return [bad for i, item in enumerate(doc) for bad in _unknown_fields(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict(str, ") and isinstance(doc, dict):
        return [bad for key, item in doc.items() for bad in _unknown_fields(item, type_name[10:-1], f"{path}.{key}")]
    by_json = attribute_maps().get(type_name)
    if by_json is None or not isinstance(doc, dict):
        return []  # a scalar, a quantity, or a free-form object
    unknown = [f"{path}.{key}" for key in doc if key not in by_json]
    return unknown + [
        bad
        for key, item in doc.items()
        if key in by_json
        for bad in _unknown_fields(item, by_json[key], f"{path}.{key}")
    ]


@pytest.mark.parametrize("case", MATRIX)
def test_kserve_objects_use_only_fields_kserve_knows(case: str) -> None:
    # KServe's CRDs are not in kubernetes-validate; its generated API models (the kserve package) list every field
    roots = {"InferenceService": "V1beta1InferenceServiceSpec", "ServingRuntime": "V1alpha1ServingRuntimeSpec"}
    checked = 0
    for obj in render_case(case).objects:
        if obj["kind"] in roots:
            assert _unknown_fields(obj["spec"], roots[obj["kind"]], f"{obj['kind']}/{obj['metadata']['name']}") == []
            checked += 1
    assert checked >= 2


def test_optional_parts_switch_off_cleanly() -> None:
    values = with_values(
        "minimal",
        recorder__enabled=False,
        rollout__enabled=False,
        provision__enabled=False,
        rewards__enabled=False,
        networkPolicy__enabled=False,
        gateway__autoscaling__enabled=False,
        gateway__pdb__enabled=False,
        generator__runtime__create=False,
        generator__runtime__name="triton",
    )
    rendered = render(values)
    components = {obj["metadata"]["labels"]["app.kubernetes.io/component"] for obj in rendered.objects}
    assert not components & {"recorder", "rollout", "provision", "rewards", "network"}
    kinds = {obj["kind"] for obj in rendered.objects}
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServingRuntime", "Job"}
    assert rendered.workload("gateway")["spec"]["replicas"] == 2  # the HPA no longer owns it
    isvc = rendered.one("InferenceService", "demo-musicrl-generator")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "triton"
    for obj in rendered.objects:
        if obj["kind"] == "InferenceService":
            validate_isvc(obj)
        elif obj["kind"] not in NOT_IN_KUBERNETES_SCHEMAS:
            kubernetes_validate.validate(obj, KUBE_VERSION.removeprefix("v"), strict=True)


def test_http_route_is_an_alternative_to_the_ingress() -> None:
    values = with_values(
        "minimal",
        gateway__httpRoute__enabled=True,
        gateway__httpRoute__parentRefs=[{"name": "shared", "namespace": "gateway-system"}],
        gateway__httpRoute__hostnames=["music.example.com"],
    )
    (route,) = render(values).of_kind("HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": "shared", "namespace": "gateway-system"}]
    assert route["spec"]["hostnames"] == ["music.example.com"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "demo-musicrl-gateway", "port": 80}]


def test_the_longest_release_name_leaves_room_for_canary_names() -> None:
    longest = "r" * 53  # Helm's limit on release names
    values = values_file("canary-standard")
    values["generator"]["canary"]["name"] = "c" * 10  # the schema's limit
    manifests = render_release(values, longest)
    (isvc,) = [
        o for o in manifests if o["kind"] == "InferenceService" and o["metadata"]["name"].endswith("-generator")
    ]
    name = isvc["metadata"]["name"]
    validate_isvc(isvc)
    # what the rollout controller names a canary, and what KServe then names its Service, fit a DNS label
    for rollout_id in ("2026-12-01-policy-v7", "x" * 80):
        assert len(f"{name}-{canary_name(rollout_id, name)}-predictor") <= 63
    assert len(f"{name}-{isvc['spec']['canary'][0]['predictor']['name']}-predictor") <= 63


def render_release(values: dict[str, Any], release: str) -> list[dict[str, Any]]:
    manifests = chart().render(values, name=release, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def test_every_predictor_drains_for_the_configured_grace_and_its_pod_outlives_the_drain() -> None:
    rendered = render(with_values("canary-standard", generator__shutdownGraceSeconds=120))
    predictors = [
        (isvc, p) for isvc, p in _predictors(rendered.objects) if isvc["metadata"]["name"].endswith("generator")
    ]
    assert len(predictors) == 2  # the stable predictor and its canary
    for _, predictor in predictors:
        env = _env(predictor["model"])
        assert env["MUSICRL_SHUTDOWN_GRACE_S"] == "120" and env["MUSICRL_CONTINUOUS_BATCHING"] == "true"
        assert predictor["terminationGracePeriodSeconds"] == 135  # SIGKILL only after the server's own drain
    rendered = render(with_values("minimal", rewards__shutdownGraceSeconds=30))
    rewards = [(i, p) for i, p in _predictors(rendered.objects) if not i["metadata"]["name"].endswith("generator")]
    assert rewards, "the minimal install serves a reward"
    for _, predictor in rewards:
        assert _env(predictor["model"])["MUSICRL_SHUTDOWN_GRACE_S"] == "30"
        assert predictor["terminationGracePeriodSeconds"] == 45
    micro = render(with_values("minimal", generator__continuousBatching=False))
    (_, predictor), *_ = _predictors(micro.objects)
    assert _env(predictor["model"])["MUSICRL_CONTINUOUS_BATCHING"] == "false"
