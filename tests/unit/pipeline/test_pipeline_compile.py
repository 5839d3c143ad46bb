"""The committed pipeline YAML: it is what compiling gives, it loads back, and its GPU steps are placed."""

from pathlib import Path

import pytest
import yaml
from kfp import components

from musicrl.pipeline.params import RetrainingParams
from pipelines.retraining import COMPILED, compile_pipeline, retraining_pipeline


GPU_STEPS = {"train-quality", "train-preference", "rl-stage", "rl-stage-2", "rl-stage-3", "offline-gate"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("compiled") / "retraining.yaml")


def test_the_committed_yaml_is_a_fresh_compile(fresh):
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/retraining.yaml is stale: python -m pipelines.retraining"
    )


def test_the_cli_writes_the_committed_yaml_byte_for_byte(tmp_path):
    import subprocess
    import sys

    # another process: kfp orders the header's dict defaults differently per process unless they are sorted,
    # and `musicrl pipeline upload` names a version after the package's hash
    out = tmp_path / "retraining.yaml"
    argv = [sys.executable, "-m", "musicrl", "pipeline", "compile", "--output", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == COMPILED.read_bytes()


def test_the_yaml_loads_back_with_every_parameter_defaulted(fresh):
    loaded = components.load_component_from_file(str(fresh))
    assert loaded.name == "musicrl-retraining"
    spec = next(yaml.safe_load_all(fresh.read_text()))
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    defaults = RetrainingParams().to_wire()
    assert set(parameters) == set(defaults)  # one definition of the parameters: the dataclass
    assert all("defaultValue" in p for p in parameters.values()), "a run from the UI with no edits must work"
    assert parameters["stages"]["defaultValue"] == "R,U,RU"
    assert parameters["gpu_node_selector"]["defaultValue"] == defaults["gpu_node_selector"]


def _executors(spec: dict) -> dict[str, dict]:
    return {name.removeprefix("exec-"): e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_gpu_steps_carry_accelerator_requests_node_selector_and_tolerations(fresh):
    documents = list(yaml.safe_load_all(fresh.read_text()))
    spec, platform = documents[0], documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    executors = _executors(spec)
    assert GPU_STEPS <= set(executors)
    for step in GPU_STEPS:
        resources = executors[step]["resources"]
        assert "pipelinechannel--gpu_type" in str(resources["accelerator"]), step
        assert "pipelinechannel--gpu_count" in str(resources["accelerator"]), step
        assert "pipelinechannel--gpu_cpu_request" in str(resources["resourceCpuRequest"]), step
        assert "pipelinechannel--gpu_memory_request" in str(resources["resourceMemoryRequest"]), step
        k8s = platform[f"exec-{step}"]
        assert "gpu_node_selector" in str(k8s["nodeSelector"]) and "gpu_tolerations" in str(k8s["tolerations"]), step
    for step in set(executors) - GPU_STEPS:  # snapshot, gate verdict, register, ...: no GPU held for them
        assert "accelerator" not in executors[step].get("resources", {}), step


def test_every_step_runs_in_the_image_parameter_with_the_storage_secret(fresh):
    documents = list(yaml.safe_load_all(fresh.read_text()))
    executors, platform = (
        _executors(documents[0]),
        documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"],
    )
    for step, container in executors.items():
        assert "pipelinechannel--image" in container["image"], step
        secrets = platform[f"exec-{step}"]["secretAsEnv"]
        assert secrets[0]["secretName"] == "musicrl-storage" and secrets[0]["optional"] is True, step


def test_the_pipeline_function_defaults_are_the_dataclass_defaults():
    import inspect

    signature = inspect.signature(retraining_pipeline.pipeline_func)
    assert {n: p.default for n, p in signature.parameters.items()} == RetrainingParams().to_wire()


def _branch(spec: dict, name: str) -> tuple[dict, set[str]]:
    """The task ``name`` (a dsl.If branch) and the names of the tasks in its sub-DAG."""
    for dag in [spec["root"]["dag"], *(c.get("dag", {}) for c in spec["components"].values())]:
        for task in dag.get("tasks", {}).values():
            if task["taskInfo"]["name"] == name:
                return task, set(spec["components"][task["componentRef"]["name"]]["dag"]["tasks"])
    raise AssertionError(f"no branch named {name}")


def test_only_a_passed_gate_registers_and_starts_the_canary_and_a_failed_one_says_why(fresh):
    # kfp.local runs the passed branch in test_retraining_pipeline.py, and the gate's own tests fail it with
    # reasons; here, that the gate's verdict is what the two branches hang on
    spec = next(yaml.safe_load_all(fresh.read_text()))
    (passed, registering), (failed, stopping) = _branch(spec, "gate-passed"), _branch(spec, "gate-failed")
    condition = passed["triggerPolicy"]["condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--offline-gate-passed'] == true"
    assert failed["triggerPolicy"]["condition"] == f"!({condition})"
    assert registering == {"register-candidate", "start-canary"}
    assert stopping == {"stop-early"}
    assert "pipelinechannel--offline-gate-reason" in failed["inputs"]["parameters"]  # what stop-early logs


def test_rl_runs_only_on_a_preference_model_that_learned_and_otherwise_the_run_stops_saying_why(fresh):
    spec = next(yaml.safe_load_all(fresh.read_text()))
    (usable, training), (useless, stopping) = (
        _branch(spec, "preference-model-usable"),
        _branch(spec, "preference-model-learned-nothing"),
    )
    condition = usable["triggerPolicy"]["condition"]
    assert condition == "inputs.parameter_values['pipelinechannel--train-preference-usable'] == true"
    assert useless["triggerPolicy"]["condition"] == f"!({condition})"
    assert {"rl-stage", "rl-stage-2", "rl-stage-3", "offline-gate"} <= training
    (stop,) = stopping
    assert stop.startswith("stop-early")
    assert "pipelinechannel--train-preference-reason" in useless["inputs"]["parameters"]


def test_every_step_carries_the_pod_labels_the_charts_network_policies_admit(fresh):
    values = yaml.safe_load((Path(__file__).resolve().parents[3] / "charts/musicrl/values.yaml").read_text())
    platform = list(yaml.safe_load_all(fresh.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    executors = platform["executors"]
    assert len(executors) >= 12  # every component of the pipeline
    for name, spec in executors.items():
        assert spec["podMetadata"]["labels"] == values["pipeline"]["podLabels"], name
