"""The server runtime: liveness at once, readiness only after load(), clean exits, load failures."""

import os
import subprocess
import sys
import time

import pytest
import requests

from tests.utils.processes import REPO_ROOT, free_port


pytestmark = pytest.mark.slow


def _start(args: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None


def _wait_for(predicate, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def test_ready_only_after_the_model_has_loaded(tmp_path):
    gate, port = tmp_path / "gate", free_port()
    env = {"MUSICRL_HTTP_PORT": str(port), "MUSICRL_GRPC_PORT": str(free_port())}
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "log").open("w") as log:
        process = _start(["tests.utils.gated_model_server", str(gate)], env, log)
    try:
        _wait_for(lambda: (r := _get(f"{base}/v2/health/live")) is not None and r.status_code == 200)
        assert _get(f"{base}/v2/health/ready").status_code != 200  # listening, but the weights are not in
        assert _get(f"{base}/v2/models/gated/ready").status_code != 200
        gate.write_text("go")
        _wait_for(lambda: _get(f"{base}/v2/health/ready").status_code == 200)
        assert _get(f"{base}/v2/models/gated/ready").status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (tmp_path / "log").read_text()


def test_a_failed_load_ends_the_process_with_a_sentence(tmp_path):
    gate = tmp_path / "gate"
    gate.write_text("fail")
    env = {"MUSICRL_HTTP_PORT": str(free_port()), "MUSICRL_GRPC_PORT": str(free_port())}
    with (tmp_path / "log").open("w") as log:
        process = _start(["tests.utils.gated_model_server", str(gate)], env, log)
    assert process.wait(timeout=60) == 6
    assert "loading the model failed: weights are corrupt" in (tmp_path / "log").read_text()


def test_a_missing_checkpoint_exits_with_the_not_found_code(tmp_path):
    env = {
        "MUSICRL_MODEL_URI": str(tmp_path / "no-such-model"),
        "MUSICRL_HTTP_PORT": str(free_port()),
        "MUSICRL_GRPC_PORT": str(free_port()),
    }
    with (tmp_path / "log").open("w") as log:
        process = _start(["services.generator"], env, log)
    assert process.wait(timeout=60) == 3
    assert "no checkpoint directory at" in (tmp_path / "log").read_text()


def test_bad_settings_stop_the_service_before_it_listens(tmp_path):
    env = {"MUSICRL_MODEL_URI": "tiny://musicgen?seed=0", "MUSICRL_MAX_BATCH_SIZE": "zero"}
    with (tmp_path / "log").open("w") as log:
        process = _start(["services.generator"], env, log)
    assert process.wait(timeout=60) == 2
    assert "MUSICRL_MAX_BATCH_SIZE: expected int, got 'zero'" in (tmp_path / "log").read_text()
