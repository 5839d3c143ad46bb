"""No drift between the chart and the services: every variable it sets is one the service reads, every port and probe
path one it serves, every command a module or a `musicrl` sub-command that runs. Checked against the config classes,
the gateway's FastAPI routes and KServe's V2 router, not against a list kept here."""

import dataclasses
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from musicrl.cli import build_parser
from musicrl.config import BusConfig, GeneratorServiceConfig, RewardServiceConfig
from musicrl.gateway.app import create_app
from musicrl.gateway.config import GatewayConfig
from musicrl.recorder.config import RecorderConfig
from musicrl.rollout.config import ControllerConfig
from musicrl.settings import config_from
from musicrl.triton.config import TritonExportConfig, TritonServeConfig
from tests.unit.chart.rendering import MATRIX, REPO_ROOT, Rendered, pod_spec, render, render_case, with_values
from tests.utils import kserve_models


# Variables the chart sets that are not MUSICRL_* settings, and who reads them.
THIRD_PARTY_ENV = {
    "OMP_NUM_THREADS": "torch's intra-op thread count (the generator's torch_threads setting)",
    "HF_HOME": "Hugging Face's cache folder, on an emptyDir (the root filesystem is read-only)",
    "XDG_CACHE_HOME": "the cache root of torch hub and other libraries, on the same emptyDir",
}
# Placeholders for values the chart takes from Secrets, which a render cannot see.
SECRET_VALUES = {"MUSICRL_SECRET_KEY": "k" * 40, "MUSICRL_NATS_URL": "nats://user:password@nats.example:4222"}


def leaf_names(cls: type) -> set[str]:
    """Every leaf field name of a config dataclass, nested configs flattened (as musicrl.settings does)."""
    names: set[str] = set()
    for field in dataclasses.fields(cls):
        nested = [t for t in (field.type, *getattr(field.type, "__args__", ())) if dataclasses.is_dataclass(t)]
        if nested:
            names |= leaf_names(nested[0])  # type: ignore[arg-type]
        else:
            names.add(field.name)
    return names


def _read_by_name(name: str) -> bool:
    """Whether the platform reads the variable itself (``os.environ.get("MUSICRL_X")``), outside the config classes."""
    read = re.compile(rf'(?:environ\.get\(|environ\[|getenv\()\s*"{name}"')
    return any(read.search(path.read_text()) for path in (REPO_ROOT / "musicrl").rglob("*.py"))


def container_env(rendered: Rendered, *containers: dict[str, Any]) -> dict[str, str]:
    """The environment of a container (several: a runtime's container plus the InferenceService's model), as the
    kubelet builds it: ConfigMap references resolved, Secret references replaced by placeholders."""
    env: dict[str, str] = {}
    for container in containers:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(rendered.one("ConfigMap", source["configMapRef"]["name"])["data"])
            # a secretRef holds object-store credentials (AWS_* and the like), which no config class reads
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            else:
                assert "secretKeyRef" in entry["valueFrom"], entry
                env[entry["name"]] = SECRET_VALUES[entry["name"]]
    return env


def assert_no_drift(env: dict[str, str], cls: type, what: str) -> Any:
    """Every variable is a leaf of ``cls`` (or a known outside one), and together they build ``cls``."""
    leaves = leaf_names(cls)
    for name in env:
        if name.startswith("MUSICRL_"):
            leaf = name.removeprefix("MUSICRL_").lower()
            assert leaf in leaves or _read_by_name(name), f"{what}: {name} is not a setting of {cls.__name__}"
        else:
            assert name in THIRD_PARTY_ENV, f"{what}: nothing reads {name}"
    return config_from(cls, environ=env)  # raises if a value does not parse or a required one is missing


def assert_runs_module(command: list[str], module: str) -> None:
    assert command == ["python", "-m", module]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    origin = Path(spec.origin)
    main = origin.parent / "__main__.py" if origin.name == "__init__.py" else origin
    assert main.exists() and '__name__ == "__main__"' in main.read_text(), f"{module} does not run as a module"


def assert_runs_cli(command: list[str], *words: str) -> None:
    """``musicrl WORDS...``: the console script the package installs, and a sub-command its parser knows."""
    assert command == ["musicrl", *words]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["musicrl"] == "musicrl.cli:main"
    args = build_parser().parse_args(list(words))  # an unknown or incomplete sub-command exits with a usage error
    assert callable(args.command), words


def http_paths(app: FastAPI) -> set[str]:
    return set(app.openapi()["paths"])


def probe_paths(container: dict[str, Any]) -> set[str]:
    probes = [container.get(p) for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    return {probe["httpGet"]["path"] for probe in probes if probe and "httpGet" in probe}


def named_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize("case", MATRIX)
def test_gateway(case: str) -> None:
    rendered = render_case(case)
    (container,) = pod_spec(rendered.workload("gateway"))["containers"]
    config = assert_no_drift(container_env(rendered, container), GatewayConfig, "gateway")
    assert config.host == "0.0.0.0"
    assert named_port(container, "http") == config.port
    assert_runs_module(container["command"], "services.gateway")
    served = http_paths(create_app(config))
    assert probe_paths(container) == {"/readyz", "/healthz"}
    assert probe_paths(container) <= served
    assert "/metrics" in served  # what the ServiceMonitor scrapes on this port
    if config.api_keys_file:
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(config.api_keys_file).parent) in mounts


@pytest.mark.parametrize("case", MATRIX)
def test_recorder_and_rollout_controller(case: str) -> None:
    rendered = render_case(case)
    for component, cls, module in (
        ("recorder", RecorderConfig, "services.recorder"),
        ("rollout", ControllerConfig, "services.rollout"),
    ):
        (container,) = pod_spec(rendered.workload(component))["containers"]
        config = assert_no_drift(container_env(rendered, container), cls, component)
        assert named_port(container, "metrics") == config.metrics_port
        assert config.metrics_host == "0.0.0.0"  # reachable by Prometheus, not only on loopback
        assert_runs_module(container["command"], module)
        assert container["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    controller = config_from(ControllerConfig, environ=container_env(rendered, container))
    assert controller.target == "kserve"
    target = controller.kserve_target()  # the checks the controller runs at start-up
    generator = rendered.one("InferenceService", target.isvc_name)
    assert generator["metadata"]["annotations"]["serving.kserve.io/deploymentMode"].lower() == target.mode


def test_the_charts_rollout_defaults_are_the_controllers_and_each_value_reaches_it() -> None:
    (container,) = pod_spec(render_case("minimal").workload("rollout"))["containers"]
    controller = config_from(ControllerConfig, environ=container_env(render_case("minimal"), container))
    defaults = ControllerConfig(bus=controller.bus)
    assert controller.rule == defaults.rule and controller.guardrails == defaults.guardrails
    judged = ("max_votes_per_listener", "min_listened_share", "check_interval_s", "warmup_s")
    assert {n: getattr(controller, n) for n in judged} == {n: getattr(defaults, n) for n in judged}
    values = with_values(
        "minimal",
        rollout__decision__alpha=0.01,
        rollout__decision__minVotes=200,
        rollout__guardrails__maxLatencyRatio=2,
    )
    (container,) = pod_spec((tuned := render(values)).workload("rollout"))["containers"]
    controller = config_from(ControllerConfig, environ=container_env(tuned, container))
    assert (controller.rule.alpha, controller.rule.min_votes, controller.guardrails.max_latency_ratio) == (
        0.01,
        200,
        2.0,
    )


@pytest.mark.parametrize("case", MATRIX)
def test_provisioning_job(case: str) -> None:
    rendered = render_case(case)
    (job,) = rendered.of_kind("Job")
    (container,) = pod_spec(job)["containers"]
    config = assert_no_drift(container_env(rendered, container), BusConfig, "provision")
    assert_runs_cli(container["command"], "bus", "provision")
    # it provisions what the services use: the same settings from the same ConfigMap
    (gateway,) = pod_spec(rendered.workload("gateway"))["containers"]
    assert config == config_from(GatewayConfig, environ=container_env(rendered, gateway)).bus


@pytest.mark.parametrize("case", MATRIX)
def test_model_servers(case: str) -> None:
    rendered = render_case(case)
    v2_paths = set(kserve_models.v2_paths())
    runtimes = {runtime["metadata"]["name"]: runtime for runtime in rendered.of_kind("ServingRuntime")}
    checked = 0
    for isvc in rendered.of_kind("InferenceService"):
        predictors = [isvc["spec"]["predictor"]] + [c["predictor"] for c in isvc["spec"].get("canary", [])]
        for predictor in predictors:
            model = predictor["model"]
            (runtime_container,) = runtimes[model["runtime"]]["spec"]["containers"]
            is_generator = isvc["metadata"]["labels"]["app.kubernetes.io/component"] == "generator"
            if runtime_container["image"].split("/")[-1].startswith("musicrl-triton"):
                assert_triton_runtime(runtime_container, container_env(rendered, runtime_container, model), v2_paths)
                checked += 1
                continue
            cls, module = (
                (GeneratorServiceConfig, "services.generator")
                if is_generator
                else (RewardServiceConfig, "services.rewards")
            )
            config = assert_no_drift(container_env(rendered, runtime_container, model), cls, isvc["metadata"]["name"])
            assert config.server.host == "0.0.0.0"
            assert named_port(runtime_container, "http1") == config.server.http_port == 8080  # KServe's REST port
            assert runtime_container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert runtime_container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            assert probe_paths(runtime_container) <= v2_paths
            assert_runs_module(runtime_container["command"], module)
            if is_generator:
                assert config.model_uri == "/mnt/models"  # where KServe's storage initializer puts storageUri
            else:
                assert set(config.models().values()) == {"/mnt/models"}
                assert len(config.models()) == 1  # one reward per InferenceService
                assert isvc["metadata"]["name"].endswith(next(iter(config.models())))
            checked += 1
    assert checked >= 1


def assert_triton_runtime(container: dict[str, Any], env: dict[str, str], v2_paths: set[str]) -> None:
    """The Triton runtime's script: its export and serve commands parse with the real CLI, on KServe's ports."""
    assert container["command"] == ["/bin/sh", "-c"]
    commands = [
        shlex.split(line.strip().removeprefix("exec ").split(" || ")[0])
        for (script,) in [container["args"]]
        for line in script.splitlines()
        if "musicrl " in line
    ]
    export_args, serve_args = (build_parser().parse_args(c[1:]) for c in commands)
    export = config_from(TritonExportConfig, args=export_args, environ=env)
    serve = config_from(TritonServeConfig, args=serve_args, environ=env)
    assert export.model_uri == "/mnt/models" and export.text_adherence_uri is None and export.quality_uri is None
    assert serve.repository == export.out and serve.host == "0.0.0.0"
    assert named_port(container, "http1") == serve.http_port == 8080 and serve.grpc_port == 8081
    known = leaf_names(GeneratorServiceConfig) | leaf_names(TritonExportConfig) | leaf_names(TritonServeConfig)
    for name in env:
        if name.startswith("MUSICRL_"):  # the export copies the generator's settings into the repository
            assert name.removeprefix("MUSICRL_").lower() in known or _read_by_name(name), f"triton: {name}"
        else:
            assert name in THIRD_PARTY_ENV, f"triton: nothing reads {name}"
    config_from(GeneratorServiceConfig, environ={**env, "MUSICRL_MODEL_URI": export.model_uri})  # what the stub reads
    assert probe_paths(container) <= v2_paths


def test_gateway_and_rollout_agree_on_the_generator() -> None:
    rendered = render_case("canary-standard")
    (gateway,) = pod_spec(rendered.workload("gateway"))["containers"]
    (rollout,) = pod_spec(rendered.workload("rollout"))["containers"]
    gateway_config = config_from(GatewayConfig, environ=container_env(rendered, gateway))
    target = config_from(ControllerConfig, environ=container_env(rendered, rollout)).kserve_target()
    # the gateway's stable URL is the one the controller computes for the stable predictor's Service
    assert gateway_config.generator_url == target.address(f"{target.isvc_name}-predictor")
    assert gateway_config.generator_model_name == target.model_name
    isvc = rendered.one("InferenceService", target.isvc_name)
    assert gateway_config.stable_model_uri == isvc["spec"]["predictor"]["model"]["storageUri"]


def test_dashboard_and_alerts_use_only_metrics_the_platform_exports() -> None:
    exported = set()
    for path in (REPO_ROOT / "musicrl").rglob("*.py"):
        exported |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(musicrl_[a-z_]+)"', path.read_text()))
    assert {"musicrl_rollout_votes_total", "musicrl_rollout_actions_total"} <= exported
    rendered = render_case("production")
    text = rendered.one("ConfigMap", "demo-musicrl-dashboard")["data"]["musicrl.json"]
    text += str(rendered.of_kind("PrometheusRule"))
    used = set(re.findall(r"\b(musicrl_[a-z_]+?)(?:_bucket|_count|_sum)?\b", text))
    assert used
    assert used <= exported
