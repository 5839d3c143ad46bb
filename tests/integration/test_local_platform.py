"""``musicrl up`` (make run): every service on loopback, reachable, and stopped in order by one Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from tests.utils.processes import REPO_ROOT, free_port


pytestmark = pytest.mark.slow


def test_up_serves_the_page_and_the_api_then_stops_everything_on_ctrl_c(tmp_path):
    ports = {name: free_port() for name in ("gateway", "http", "grpc", "nats", "metrics")}
    command = [
        sys.executable, "-m", "musicrl", "up",
        "--state-dir", str(tmp_path / "state"),
        "--gateway-port", str(ports["gateway"]),
        "--generator-http-port", str(ports["http"]),
        "--generator-grpc-port", str(ports["grpc"]),
        "--nats-port", str(ports["nats"]),
        "--recorder-metrics-port", str(ports["metrics"]),
    ]  # fmt: skip
    with (tmp_path / "up.log").open("w") as log:
        up = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ports['gateway']}"
    try:
        _wait_until(lambda: _status(f"{base}/readyz") == 200, up, tmp_path)
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 4  # nats-server, generator, recorder, gateway
        key = (tmp_path / "state" / "admin.key").read_text().strip()
        reply = requests.post(
            f"{base}/v1/comparisons", json={"prompt": "surf rock"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 201, reply.text
        assert "Which clip do you prefer?" in requests.get(base + "/").text
        keys = json.loads((tmp_path / "state" / "api-keys.json").read_text())
        assert [k["id"] for k in keys] == ["local-admin"] and key not in json.dumps(keys)  # stored hashed
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, (tmp_path / "up.log").read_text()
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert "recorder stopped" in (tmp_path / "state" / "logs" / "recorder.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.ConnectionError:
        return None


def _wait_until(predicate, process: subprocess.Popen, tmp_path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((tmp_path / "up.log").read_text())
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError((tmp_path / "up.log").read_text())
