"""The server runtime: liveness at once, readiness only after load(), clean exits, load failures."""

import os
import socket
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
    env = {"MUSICRL_HTTP_PORT": str(port), "MUSICRL_GRPC_PORT": str(free_port()), "MUSICRL_TORCH_THREADS": "3"}
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
    assert "torch runs 3 intra-op threads" in (tmp_path / "log").read_text()  # sized before the models load


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


def _non_loopback_address() -> str | None:
    """This machine's outward IPv4 address (a UDP connect sends nothing), or None if it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host, reachable_from_outside", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_listeners_bind_the_configured_address(tmp_path, host, reachable_from_outside):
    outside = _non_loopback_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    http_port, grpc_port = free_port(), free_port()
    env = {"MUSICRL_HOST": host, "MUSICRL_HTTP_PORT": str(http_port), "MUSICRL_GRPC_PORT": str(grpc_port)}
    with (tmp_path / "log").open("w") as log:
        process = _start(["tests.utils.gated_model_server", str(tmp_path / "never-opens")], env, log)
    try:
        _wait_for(lambda: _accepts("127.0.0.1", http_port) and _accepts("127.0.0.1", grpc_port))
        assert _accepts(outside, http_port) is reachable_from_outside
        assert _accepts(outside, grpc_port) is reachable_from_outside
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_while_loading_exits_without_waiting_for_the_load(tmp_path):
    port = free_port()
    env = {"MUSICRL_HTTP_PORT": str(port), "MUSICRL_GRPC_PORT": str(free_port())}
    with (tmp_path / "log").open("w") as log:
        process = _start(["tests.utils.gated_model_server", str(tmp_path / "never-opens")], env, log)
    _wait_for(lambda: _accepts("127.0.0.1", port))
    process.terminate()
    assert process.wait(timeout=30) == 0
    assert "exiting before the model finished loading" in (tmp_path / "log").read_text()
