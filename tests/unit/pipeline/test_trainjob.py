"""The RL stage's TrainJob: a body the Trainer's API models accept, and the wait on a Kubernetes API stand-in.

No Kubernetes API server runs here: the stand-in is a real HTTP server on loopback that records requests and
serves a TrainJob whose status turns Complete (or Failed); the code under test reaches it through a real
``kubernetes`` ApiClient, so paths, verbs and the JSON on the wire are the client's own.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeflow_trainer_api import models
from kubernetes import client

from musicrl.pipeline.params import RetrainingParams
from musicrl.pipeline.trainjob import (
    SecretEnv,
    TrainJobFailed,
    TrainJobSpec,
    rl_command,
    run_stage,
    stage_trainjob,
    submit_and_wait,
    trainjob_body,
)
from musicrl.rl import checkpoints
from tests.utils.recording_http import Recorded, recording_server


TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"


def spec(**overrides: Any) -> TrainJobSpec:
    settings: dict[str, Any] = dict(
        name="musicrl-rl-r-0123456789",
        image="ghcr.io/musicrl/musicrl:0.1.0",
        config_path="/data/runs/r/stage-config.yaml",
        num_nodes=2,
        gpus_per_node=4,
        cpu="16",
        memory="128Gi",
        secret_env=(SecretEnv("AWS_ACCESS_KEY_ID", "musicrl-storage", "AWS_ACCESS_KEY_ID", optional=True),),
        env={"NCCL_DEBUG": "WARN"},
        node_selector={"musicrl.io/pool": "gpu"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    )
    return TrainJobSpec(**(settings | overrides))


def snake_case_keys(value: Any, path: str = "") -> list[str]:
    """Keys with an underscore anywhere in ``value``, except under env values and labels (free-form)."""
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if "_" in key and not path.endswith(("labels", "nodeSelector", "limits", "requests")):
                found.append(f"{path}.{key}")
            found += snake_case_keys(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            found += snake_case_keys(item, path)
    return found


def test_the_body_round_trips_through_the_trainer_api_models_and_is_camel_case():
    body = trainjob_body(spec())
    parsed = models.TrainerV1alpha1TrainJob.from_dict(body)
    assert parsed is not None and parsed.to_dict() == body
    assert snake_case_keys(body) == []
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and body["kind"] == "TrainJob"
    assert body["spec"]["runtimeRef"] == {
        "name": "torch-distributed",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }


def test_each_process_runs_the_single_pod_steps_command_under_torchrun():
    trainer = trainjob_body(spec())["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "--no-python"]
    assert trainer["args"] == rl_command("/data/runs/r/stage-config.yaml")
    assert trainer["args"] == ["musicrl", "train", "rl", "--config", "/data/runs/r/stage-config.yaml"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)  # one process per GPU on each node


def test_resources_secrets_and_placement_reach_the_body():
    body = trainjob_body(spec())
    trainer = body["spec"]["trainer"]
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "128Gi"},
        "limits": {"memory": "128Gi", "nvidia.com/gpu": "4"},
    }
    assert trainer["env"] == [
        {"name": "NCCL_DEBUG", "value": "WARN"},
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "musicrl-storage", "key": "AWS_ACCESS_KEY_ID", "optional": True}},
        },
    ]
    (patch,) = body["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert job["name"] == "node"
    assert pod == {
        "nodeSelector": {"musicrl.io/pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


def test_a_cpu_job_without_placement_has_no_gpu_limit_and_no_patch():
    body = trainjob_body(spec(gpus_per_node=0, node_selector={}, tolerations=(), secret_env=(), env={}))
    trainer = body["spec"]["trainer"]
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    assert trainer["numProcPerNode"] == 1 and "env" not in trainer
    assert "runtimePatches" not in body["spec"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "RL_Stage"}, "RFC 1035"),
        ({"num_nodes": 0}, "num_nodes must be >= 1"),
        ({"memory": "lots"}, "memory must be a Kubernetes quantity"),
        ({"tolerations": ({"key": "k", "operator": "Maybe"},)}, "operator must be Equal or Exists"),
    ],
)
def test_a_malformed_spec_is_refused_with_a_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


def test_the_pipelines_parameters_make_a_stage_trainjob_named_after_its_output_folder():
    params = RetrainingParams(rl_workers=3, gpu_count=2)
    first = stage_trainjob("RU", "/data/c.yaml", "/data/runs/1/ru", params)
    again = stage_trainjob("RU", "/data/c.yaml", "/data/runs/1/ru", params)
    other = stage_trainjob("RU", "/data/c.yaml", "/data/runs/2/ru", params)
    assert first.name == again.name != other.name and re.fullmatch(r"musicrl-rl-ru-[0-9a-f]{10}", first.name)
    assert (first.num_nodes, first.gpus_per_node, first.image) == (3, 2, params.image)
    assert dict(first.node_selector) == params.gpu_node_selector
    assert {s.key for s in first.secret_env} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(s.optional and s.secret == "musicrl-storage" for s in first.secret_env)
    assert stage_trainjob("R", "/c.yaml", "/o", params, secret_name="").secret_env == ()


class TrainJobStandIn:
    """The Kubernetes API for TrainJobs: stores what is created; its status turns ``final`` on the 3rd read."""

    def __init__(self, final: dict[str, Any], *, exists: bool = False) -> None:
        self.final = final
        self.jobs: dict[str, dict[str, Any]] = {}
        self.reads = 0
        self.exists = exists

    def __call__(self, request: Recorded) -> tuple[int, Any]:
        if request.method == "POST" and request.path == TRAINJOBS:
            name = request.json["metadata"]["name"]
            if self.exists or name in self.jobs:
                self.jobs.setdefault(name, dict(request.json))
                return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
            self.jobs[name] = dict(request.json)
            return 201, request.json
        if request.method == "GET" and request.path.startswith(TRAINJOBS + "/"):
            job = self.jobs.get(request.path.rsplit("/", 1)[-1])
            if job is None:
                return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
            self.reads += 1
            conditions = [{"type": "Created", "status": "True", "reason": "JobsCreated", "message": ""}]
            if self.reads >= 3:
                conditions.append(self.final)
            return 200, job | {"status": {"conditions": conditions}}
        return 404, {"kind": "Status", "reason": "NotFound", "code": 404}


@pytest.fixture
def kube() -> Iterator[tuple[TrainJobStandIn, list[Recorded], client.CustomObjectsApi]]:
    stand_in = TrainJobStandIn({"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done"})
    with recording_server(stand_in) as (url, recorded):
        yield stand_in, recorded, custom_objects(url)


def custom_objects(url: str) -> client.CustomObjectsApi:
    configuration = client.Configuration()
    configuration.host = url
    return client.CustomObjectsApi(client.ApiClient(configuration))


def test_submit_and_wait_creates_the_job_then_polls_until_complete(kube):
    stand_in, recorded, api = kube
    body = trainjob_body(spec())
    job = submit_and_wait(body, "ml", api, poll_s=0.01, timeout_s=10)
    assert job["status"]["conditions"][-1]["type"] == "Complete"
    create, *reads = recorded
    assert (create.method, create.path, create.json) == ("POST", TRAINJOBS, body)
    assert [(r.method, r.path) for r in reads] == [("GET", f"{TRAINJOBS}/musicrl-rl-r-0123456789")] * 3


def test_a_failed_trainjob_fails_the_step_with_its_conditions_message():
    failed = {"type": "Failed", "status": "True", "reason": "TrainingFailed", "message": "node-1 exited with 137"}
    with recording_server(TrainJobStandIn(failed)) as (url, _):
        with pytest.raises(
            TrainJobFailed, match=r"ml/musicrl-rl-r-0123456789 failed \(TrainingFailed\): node-1 exited"
        ):
            submit_and_wait(trainjob_body(spec()), "ml", custom_objects(url), poll_s=0.01, timeout_s=10)


def test_an_existing_trainjob_of_the_same_name_is_waited_on_not_resubmitted():
    stand_in = TrainJobStandIn({"type": "Complete", "status": "True", "reason": "", "message": ""}, exists=True)
    with recording_server(stand_in) as (url, recorded):
        submit_and_wait(trainjob_body(spec()), "ml", custom_objects(url), poll_s=0.01, timeout_s=10)
    assert [r.method for r in recorded] == ["POST", "GET", "GET", "GET"]


def test_a_trainjob_that_does_not_finish_in_time_is_reported_as_left_running():
    never = {"type": "Suspended", "status": "False", "reason": "", "message": ""}
    with recording_server(TrainJobStandIn(never)) as (url, _):
        with pytest.raises(TrainJobFailed, match="did not finish within 0 s; it is left running"):
            submit_and_wait(trainjob_body(spec()), "ml", custom_objects(url), poll_s=0.01, timeout_s=0.05)


def test_run_stage_hands_on_the_best_checkpoint_the_trainjob_left(kube, tmp_path: Path):
    stand_in, recorded, api = kube
    out = tmp_path / "runs" / "r"
    config = tmp_path / "stage-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stage": "R",
                "policy_uri": "tiny://musicgen?seed=0",
                "rewards": [{"reward": "loudness", "uri": "analytic://loudness"}],
                "prompts": ["a calm piano melody"],
                "out_url": str(out),
            }
        )
    )
    checkpoints.write_pointer(out, checkpoints.BEST, "step-000002")  # what the TrainJob's rank 0 leaves behind
    params = RetrainingParams(rl_workers=2)
    handed_on = run_stage("R", str(config), params, api=api, namespace="ml", poll_s=0.01, timeout_s=10)
    assert handed_on == f"{out}/checkpoints/step-000002"
    (created,) = stand_in.jobs.values()
    assert created["spec"]["trainer"]["args"] == rl_command(str(config))
    assert created["spec"]["trainer"]["numNodes"] == 2
