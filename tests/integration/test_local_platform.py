"""``musicrl up`` (make run): every service on loopback, reachable, kept running, stopped in order by one Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.utils.processes import REPO_ROOT, free_port
from tests.utils.snapshots import wait_until_recorded


pytestmark = pytest.mark.slow


def _start_up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, dict[str, int]]:
    """``musicrl up`` on free ports with its state in ``tmp_path``; its output goes to ``up.log``."""
    ports = {name: free_port() for name in ("gateway", "http", "grpc", "nats", "metrics")}
    command = [
        sys.executable, "-m", "musicrl", "up",
        "--state-dir", str(tmp_path / "state"),
        "--gateway-port", str(ports["gateway"]),
        "--generator-http-port", str(ports["http"]),
        "--generator-grpc-port", str(ports["grpc"]),
        "--nats-port", str(ports["nats"]),
        "--recorder-metrics-port", str(ports["metrics"]),
        *extra,
    ]  # fmt: skip
    with (tmp_path / "up.log").open("w") as log:
        up = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ, stdout=log, stderr=subprocess.STDOUT)
    return up, ports


def test_up_serves_the_page_and_the_api_then_stops_everything_on_ctrl_c(tmp_path):
    up, ports = _start_up(tmp_path)
    base = f"http://127.0.0.1:{ports['gateway']}"
    try:
        _wait_until(lambda: _platform_ready(tmp_path), up, tmp_path)
        assert _status(f"{base}/readyz") == 200
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 5  # nats-server, generator, recorder, gateway, rollout controller
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


def test_a_killed_recorder_is_restarted_while_the_gateway_keeps_accepting_events(tmp_path):
    # a 3 s backoff: a window wide enough to post an event while no recorder runs, even on a loaded machine;
    # two crashes in a row are the limit, so that the test also sees `musicrl up` give up on a crash loop
    up, ports = _start_up(tmp_path, "--restart-backoff-s", "3", "--max-crashes", "2")
    base, metrics = f"http://127.0.0.1:{ports['gateway']}", f"http://127.0.0.1:{ports['metrics']}/metrics"
    try:
        _wait_until(lambda: _platform_ready(tmp_path) and _status(metrics) == 200, up, tmp_path)
        headers = {"Authorization": f"Bearer {(tmp_path / 'state' / 'admin.key').read_text().strip()}"}
        comparison = requests.post(f"{base}/v1/comparisons", json={"prompt": "surf rock"}, headers=headers)
        assert comparison.status_code == 201, comparison.text
        recorders = _recorders(up)
        assert len(recorders) == 1, _logs(tmp_path)
        first = recorders[0]

        first.kill()
        first.wait(timeout=10)
        rating = requests.post(
            f"{base}/v1/ratings", json={"clip_id": comparison.json()["clips"][0]["id"], "score": 4}, headers=headers
        )
        assert rating.status_code == 201, rating.text
        assert _recorders(up) == [], _logs(tmp_path)  # the event was accepted while no recorder ran
        health = []
        while not _recorders(up):
            _check_running(up, tmp_path)
            health.append(_status(f"{base}/healthz"))
            time.sleep(0.2)

        assert health and set(health) == {200}, health  # the gateway answered throughout the recorder's absence
        (second,) = _recorders(up)
        assert second.pid != first.pid
        _wait_until(lambda: _status(metrics) == 200, up, tmp_path)
        wait_until_recorded(tmp_path / "state" / "dataset", {rating.json()["event_id"]}, timeout_s=60)
        assert up.poll() is None
        assert "recorder was killed by SIGKILL; restarting in 3 s (restart 1)" in (tmp_path / "up.log").read_text()

        children = psutil.Process(up.pid).children(recursive=True)
        second.kill()  # the second crash within a minute of the restart
        assert up.wait(timeout=60) == 1, (tmp_path / "up.log").read_text()
        assert "recorder was killed by SIGKILL: 2 crashes in a row" in (tmp_path / "up.log").read_text()
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if up.poll() is None:
            up.kill()


def _recorders(up: subprocess.Popen) -> list[psutil.Process]:
    """The live recorder processes among ``up``'s children (a killed one may linger as a zombie until reaped)."""
    found = []
    for child in psutil.Process(up.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "services.recorder" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue  # exited between the listing and the look
    return found


def _logs(tmp_path) -> str:
    """``musicrl up``'s output and the recorder's log, for a failure message."""
    return "\n".join(
        f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
        for path in (tmp_path / "up.log", tmp_path / "state" / "logs" / "recorder.log")
        if path.exists()
    )


def _check_running(process: subprocess.Popen, tmp_path) -> None:
    if process.poll() is not None:
        raise RuntimeError((tmp_path / "up.log").read_text())


def _platform_ready(tmp_path) -> bool:
    """Whether ``musicrl up`` has said that everything is ready (the gateway and the generator's model)."""
    return "Ctrl-C stops everything" in (tmp_path / "up.log").read_text()


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.ConnectionError:
        return None


def _wait_until(predicate, process: subprocess.Popen, tmp_path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_running(process, tmp_path)
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError((tmp_path / "up.log").read_text())
