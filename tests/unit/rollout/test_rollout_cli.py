"""``musicrl rollout``: bad input gets a sentence and an exit code before anything is started; the levers work."""

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from musicrl.bus.local_server import LocalNatsServer
from musicrl.cli import main
from musicrl.pipeline.registry import PolicyRegistry
from tests.utils.processes import free_port


def _run(argv: Sequence[str]) -> int:
    try:
        main(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "musicrl" and r.levelno == logging.ERROR]


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    PolicyRegistry(str(root)).register("tiny://musicgen?seed=1")  # v1
    PolicyRegistry(str(root)).register(str(tmp_path / "no-such-checkpoint"))  # v2: nothing there
    return root


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    with LocalNatsServer(tmp_path / "nats") as server:
        yield server.url


NOWHERE = f"nats://127.0.0.1:{free_port()}"  # bad input must be refused before the bus is ever reached


def test_an_unknown_version_is_refused_with_a_sentence(registry: Path, caplog: pytest.LogCaptureFixture) -> None:
    status = _run(["rollout", "start", "v9", "--registry-url", str(registry), "--nats-url", NOWHERE])
    assert status == 3
    (error,) = _errors(caplog)
    assert "v9" in error


def test_a_version_whose_checkpoint_does_not_load_is_refused(registry: Path, caplog: pytest.LogCaptureFixture) -> None:
    status = _run(["rollout", "start", "v2", "--registry-url", str(registry), "--nats-url", NOWHERE])
    assert status == 3
    (error,) = _errors(caplog)
    assert "no-such-checkpoint" in error


@pytest.mark.parametrize("share", ["1.5", "-0.1", "nan"])
def test_a_canary_share_outside_0_to_1_is_refused(
    registry: Path, share: str, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["rollout", "start", "v1", "--registry-url", str(registry), "--canary-share", share, "--nats-url", NOWHERE]
    assert _run(argv) == 2
    assert _errors(caplog) == [f"the canary share of comparisons must be between 0 and 1, got {float(share)!r}"]


@pytest.mark.parametrize("flag", ["--alpha", "--beta"])
@pytest.mark.parametrize("value", ["0", "0.5", "0.7"])
def test_error_levels_outside_0_to_half_are_refused(flag: str, value: str, caplog: pytest.LogCaptureFixture) -> None:
    assert _run(["rollout", "analyse", flag, value, "--nats-url", NOWHERE]) == 2
    (error,) = _errors(caplog)
    assert "between 0 and 0.5" in error and flag.strip("-") in error


def test_start_records_the_request_a_second_start_is_refused_and_analyse_says_wait(
    registry: Path, nats_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    start = ["rollout", "start", "v1", "--registry-url", str(registry), "--nats-url", nats_url, "--by", "ops"]
    assert _run([*start, "--canary-url", "127.0.0.1:1"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["status"], record["version"], record["requested_by"]) == ("requested", "v1", "ops")

    assert _run([*start, "--canary-url", "127.0.0.1:1"]) == 9
    assert any("is requested; promote or roll it back before starting another" in e for e in _errors(caplog))

    assert _run(["rollout", "status", "--nats-url", nats_url]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == record["id"]

    assert _run(["rollout", "analyse", "--nats-url", nats_url]) == 0
    report = capsys.readouterr().out
    assert f"# Rollout {record['id']}: v1" in report and "The rule says now: wait" in report


def test_policy_register_records_a_checkpoint_by_hand_and_refuses_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = str(tmp_path / "registry")
    assert _run(["policy", "register", "tiny://musicgen?seed=4", "--registry-url", root]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert PolicyRegistry(root).get("v1").model_uri == "tiny://musicgen?seed=4"
    assert _run(["policy", "register", str(tmp_path / "nothing"), "--registry-url", root]) == 3
    assert [v.version for v in PolicyRegistry(root).list()] == ["v1"]
