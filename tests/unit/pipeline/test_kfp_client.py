"""``musicrl pipeline compile|upload|run|schedule`` through the real ``kfp.Client``, against a KFP stand-in.

No Kubeflow Pipelines backend runs here: the stand-in (``tests.utils.kfp_stand_in``) is a real HTTP server on
loopback implementing the v2beta1 endpoints the client calls, recording every request; the assertions are
on what arrived. The pipeline is a tiny stand-in too (``tests.utils.tiny_pipeline``), so these tests do not
depend on the retraining pipeline's definition.
"""

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from musicrl.cli import main
from musicrl.errors import InvalidRequest
from musicrl.pipeline.kfp_client import compile_pipeline, parse_params
from musicrl.pipeline.kfp_config import ScheduleConfig
from tests.utils.kfp_stand_in import API, KfpStandIn
from tests.utils.processes import free_port
from tests.utils.recording_http import Recorded, recording_server


TINY = "tests.utils.tiny_pipeline:tiny_pipeline"
CRON = "0 0 3 * * *"  # 03:00 UTC daily, in Kubeflow's six fields


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("KFP_", "MUSICRL_PIPELINE_", "KF_PIPELINES"))]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> str:
    return compile_pipeline(TINY, str(tmp_path_factory.mktemp("package") / "tiny.yaml"))


@pytest.fixture
def kfp(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KfpStandIn, list[Recorded]]]:
    stand_in = KfpStandIn()
    with recording_server(stand_in) as (url, recorded):
        monkeypatch.setenv("KFP_HOST", url)
        yield stand_in, recorded


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``musicrl`` in-process; returns (exit status, stdout, stderr)."""
    try:
        main(list(argv))
        status = 0
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def requests_to(recorded: list[Recorded], method: str, route: str) -> list[Recorded]:
    return [r for r in recorded if r.method == method and r.path == API + route]


def test_compile_writes_the_package_and_prints_its_path(tmp_path, capsys):
    output = tmp_path / "out" / "tiny.yaml"
    status, out, _ = run_cli(["pipeline", "compile", "--pipeline", TINY, "--output", str(output)], capsys)
    assert (status, out) == (0, f"{output}\n")
    spec = yaml.safe_load(output.read_text())
    assert spec["pipelineInfo"]["name"] == "tiny-retraining"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"message", "rl_workers"}


def test_compile_names_a_pipeline_it_cannot_import(tmp_path, capsys):
    status, _, err = run_cli(["pipeline", "compile", "--pipeline", "pipelines.nowhere:p", "--output",
                              str(tmp_path / "p.yaml")], capsys)  # fmt: skip
    assert status == InvalidRequest.exit_code and "cannot load the pipeline 'pipelines.nowhere:p'" in err


def test_schedule_twice_leaves_one_recurring_run_and_deletes_the_old_one(kfp, package, capsys):
    stand_in, recorded = kfp
    other = stand_in.add_recurring_run("someone-elses-schedule")
    argv = ["pipeline", "schedule", "--cron", CRON, "--package", package, "--param", "rl_workers=4"]

    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    first = json.loads(out)
    assert (
        first["replaced"] == []
        and requests_to(recorded, "DELETE", f"/recurringruns/{first['recurring_run_id']}") == []
    )
    recorded.clear()

    status, out, _ = run_cli(argv, capsys)
    assert status == 0
    second = json.loads(out)
    assert second["replaced"] == [first["recurring_run_id"]]
    deletes = [r for r in recorded if r.method == "DELETE"]
    assert [r.path for r in deletes] == [f"{API}/recurringruns/{first['recurring_run_id']}"]  # one, the old one
    (create,) = requests_to(recorded, "POST", "/recurringruns")
    body = create.json
    assert body["display_name"] == "musicrl-retraining"
    assert body["trigger"]["cron_schedule"]["cron"] == CRON
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {
        "pipeline_id": second["pipeline_id"],
        "pipeline_version_id": second["version_id"],
    }
    assert body["runtime_config"]["parameters"] == {"rl_workers": 4}
    # the name filter reached the server, and the delete came after the new schedule existed
    (listing,) = requests_to(recorded, "GET", "/recurringruns")
    assert json.loads(listing.param("filter") or "{}")["predicates"][0]["stringValue"] == "musicrl-retraining"
    assert recorded.index(create) < recorded.index(deletes[0])

    names = sorted(r["display_name"] for r in stand_in.recurring_runs.values())
    assert names == ["musicrl-retraining", "someone-elses-schedule"] and other in stand_in.recurring_runs


def test_schedule_pages_through_every_same_named_recurring_run(kfp, package, capsys):
    stand_in, recorded = kfp
    old = [stand_in.add_recurring_run("nightly") for _ in range(5)]  # two racing deploys, a manual copy, ...
    status, out, _ = run_cli(["pipeline", "schedule", "--cron", CRON, "--schedule-name", "nightly",
                              "--package", package], capsys)  # fmt: skip
    assert status == 0
    assert sorted(json.loads(out)["replaced"]) == sorted(old)
    assert len(requests_to(recorded, "GET", "/recurringruns")) == 3  # pages of two: 2 + 2 + 1
    assert [r["display_name"] for r in stand_in.recurring_runs.values()] == ["nightly"]


def test_a_five_field_cron_is_refused_before_anything_is_sent(kfp, package, capsys):
    _, recorded = kfp
    status, _, err = run_cli(["pipeline", "schedule", "--cron", "0 3 * * *", "--package", package], capsys)
    assert status == InvalidRequest.exit_code
    assert "six fields, seconds first" in err and "write '0 0 3 * * *'" in err
    assert recorded == []


def test_upload_adds_a_version_once_per_package_content(kfp, package, capsys):
    stand_in, recorded = kfp
    results = []
    for _ in range(3):
        status, out, _ = run_cli(["pipeline", "upload", "--package", package], capsys)
        assert status == 0
        results.append(json.loads(out))
    assert [r["created"] for r in results] == [True, True, False]
    # Kubeflow names a new pipeline's first version after the pipeline; ours are named by content hash
    assert results[0]["version_name"] == "musicrl-retraining"
    assert re.fullmatch(r"musicrl-retraining-[0-9a-f]{12}", results[1]["version_name"])
    assert results[2]["version_id"] == results[1]["version_id"]
    assert len(requests_to(recorded, "POST", "/pipelines/upload")) == 1
    assert len(requests_to(recorded, "POST", "/pipelines/upload_version")) == 1
    (versions,) = stand_in.versions.values()
    assert len(versions) == 2 and all(v["package_bytes"] > 0 for v in versions)


def test_run_starts_one_run_with_its_parameters_in_an_experiment_made_once(kfp, package, capsys):
    stand_in, recorded = kfp
    argv = ["pipeline", "run", "--package", package, "--experiment", "retraining", "--param", "message=hi",
            "--param", 'gpu_node_selector={"pool": "gpu"}']  # fmt: skip
    outputs = []
    for _ in range(2):
        status, out, _ = run_cli(argv, capsys)
        assert status == 0
        outputs.append(json.loads(out))
    assert len(stand_in.experiments) == 1 and len(stand_in.runs) == 2
    run = stand_in.runs[outputs[0]["run_id"]]
    assert run["runtime_config"]["parameters"] == {"message": "hi", "gpu_node_selector": {"pool": "gpu"}}
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-retraining"
    assert run["experiment_id"] == next(iter(stand_in.experiments))
    assert len(requests_to(recorded, "POST", "/experiments")) == 1


def test_the_token_from_the_environment_reaches_every_request(kfp, package, capsys, monkeypatch):
    _, recorded = kfp
    monkeypatch.setenv("KFP_TOKEN", "s3cr3t")
    assert run_cli(["pipeline", "upload", "--package", package], capsys)[0] == 0
    assert recorded and all(r.headers.get("authorization") == "Bearer s3cr3t" for r in recorded)


def test_an_unreachable_host_is_a_sentence_and_exit_10_not_a_traceback(package, capsys, monkeypatch):
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("KFP_HOST", host)
    status, out, err = run_cli(["pipeline", "schedule", "--cron", CRON, "--package", package], capsys)
    assert status == 10 and out == ""
    assert f"cannot reach Kubeflow Pipelines at {host}" in err and "KFP_HOST" in err
    assert "Traceback" not in err


def test_a_refused_token_names_the_variable_to_set(package, capsys, monkeypatch):
    with recording_server(lambda request: (401, {"error": "Unauthenticated", "code": 16})) as (url, _):
        monkeypatch.setenv("KFP_HOST", url)
        status, _, err = run_cli(["pipeline", "upload", "--package", package], capsys)
    assert status == 7 and "answered 401" in err and "KFP_TOKEN" in err


def test_a_missing_host_is_refused_with_the_variable_to_set(package, capsys):
    status, _, err = run_cli(["pipeline", "upload", "--package", package], capsys)
    assert status == InvalidRequest.exit_code and "--host (or KFP_HOST) is required" in err


def test_params_parse_json_values_and_keep_the_rest_as_text():
    assert parse_params(["rl_workers=4", "stages=R,U", "ratio=0.5", 'sel={"a": "b"}', "empty="]) == {
        "rl_workers": 4,
        "stages": "R,U",
        "ratio": 0.5,
        "sel": {"a": "b"},
        "empty": "",
    }
    with pytest.raises(InvalidRequest, match="KEY=VALUE"):
        parse_params(["rl_workers"])


@pytest.mark.parametrize("cron", ["0 0 3 * * *", "0 */30 * * * *", "@daily", "@every 6h"])
def test_six_field_crons_and_descriptors_are_accepted(cron):
    assert ScheduleConfig(cron=cron).cron == cron


def test_the_package_path_is_named_when_it_does_not_exist(kfp, capsys, tmp_path: Path):
    status, _, err = run_cli(["pipeline", "upload", "--package", str(tmp_path / "missing.yaml")], capsys)
    assert status == InvalidRequest.exit_code and "musicrl pipeline compile" in err
