"""A canary that listeners prefer is promoted by itself, through the real gateway, NATS, CLI and controller.

The stable policy is the tiny model of seed 0; the registered candidate is seed 1, whose clips are brighter.
Simulated listeners who like brightness (``musicrl.sim``; a taste the platform never sees) judge blind
comparisons through the REST API.
``musicrl rollout start`` asks the controller, which starts the canary as a second generator process; the
controller counts the votes, promotes, rewrites the routing table and announces the decision.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from musicrl.config import BusConfig
from musicrl.demo.listeners import RestPanel
from musicrl.pipeline.registry import PolicyRegistry
from musicrl.rollout import levers
from musicrl.rollout.record import RolloutRecord, Status
from musicrl.sim.listener import ListenerConfig
from musicrl.sim.tastes import Brightness
from musicrl.v1 import events_pb2
from tests.utils.platform import running_platform
from tests.utils.processes import REPO_ROOT, free_port
from tests.utils.rollout import ControllerProcess
from tests.utils.stream import stream_events


pytestmark = pytest.mark.slow

CANARY = "tiny://musicgen?seed=1"  # brighter than seed 0: its mean spectral centroid is ~2.2 kHz higher
MIN_VOTES = 20
MAX_COMPARISONS = 150


def test_a_canary_with_the_better_hidden_taste_is_promoted_by_the_controller(tmp_path):
    registry = tmp_path / "registry"
    PolicyRegistry(str(registry)).register(CANARY, parent_uri="tiny://musicgen?seed=0")
    with running_platform(tmp_path / "platform") as platform:
        controller = ControllerProcess(
            platform.nats.url,
            tmp_path / "state",
            MUSICRL_WARMUP_S="0",
            MUSICRL_CHECK_INTERVAL_S="1",
            MUSICRL_MIN_VOTES=str(MIN_VOTES),
            MUSICRL_MAX_VOTES="400",
            MUSICRL_CANARY_FIRST_PORT=str(free_port()),
        )
        (tmp_path / "state").mkdir()
        controller.start()
        try:
            started = _cli(
                "start",
                "v1",
                "--registry-url",
                str(registry),
                "--canary-share",
                "1.0",
                "--nats-url",
                platform.nats.url,
                "--by",
                "release manager",
            )
            assert started["status"] == "requested" and started["model_uri"] == CANARY
            _wait(platform.nats.url, (Status.RUNNING,), timeout_s=120)
            # the simulated-listener library's panel, voting through the REST API as the page does
            listeners = RestPanel(platform.url, platform.tokens["full"], Brightness(), ListenerConfig(temperature=0.3))
            for n in range(MAX_COMPARISONS):
                listeners.judge(f"a bright bell melody, take {n}")
                record = _current(platform.nats.url)
                if record.status.finished:
                    break
            final = _wait(platform.nats.url, (Status.PROMOTED, Status.ROLLED_BACK), timeout_s=30)
            analysis = subprocess.run(
                [sys.executable, "-m", "musicrl", "rollout", "analyse", "--nats-url", platform.nats.url],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            controller.stop()
            _stop_canary_generators(tmp_path / "state")
        assert final.status is Status.PROMOTED, (final, controller.logs())
        assert final.verdict is not None and final.verdict.actor == "controller"
        assert final.verdict.evidence["canary_wins"] > final.verdict.evidence["stable_wins"]
        assert "Decision: promote" in analysis and "listeners prefer the canary" in analysis
        routing = json.loads(_cli_admin_routing(platform))
        assert routing["stable"]["model_uri"] == CANARY and routing["canary"] is None
        announced = stream_events(platform.nats.url, "musicrl.v1.policy_rollout")
        actions = [e.action for e in announced if e.rollout_id == final.id]
        assert actions == [
            events_pb2.ROLLOUT_ACTION_CANARY_REQUESTED,
            events_pb2.ROLLOUT_ACTION_CANARY_STARTED,
            events_pb2.ROLLOUT_ACTION_PROMOTED,
        ]
        served = stream_events(platform.nats.url, "musicrl.v1.comparison_served")
        slots = {e.canary_slot for e in served}
        assert {events_pb2.CANARY_SLOT_A, events_pb2.CANARY_SLOT_B} <= slots  # blind: both slots held the canary


def _cli(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "musicrl", "rollout", *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cli_admin_routing(platform) -> str:
    import requests

    reply = requests.get(f"{platform.url}/v1/admin/routing", headers=platform.headers(), timeout=10)
    reply.raise_for_status()
    return reply.text


def _current(nats_url: str) -> RolloutRecord:
    async def read() -> RolloutRecord:
        async with levers.open_bus(BusConfig(nats_url=nats_url), name="test") as bus:
            record, _ = await bus.store.get()
        assert record is not None
        return record

    return asyncio.run(read())


def _wait(nats_url: str, statuses: tuple[Status, ...], timeout_s: float) -> RolloutRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        record = _current(nats_url)
        if record.status in statuses or time.monotonic() > deadline:
            assert record.status in statuses, record
            return record
        time.sleep(0.3)


def _stop_canary_generators(state) -> None:
    """The canary generator runs in its own session (it outlives the controller): stop it with the test."""
    for path in (state / "canaries").glob("*.json"):
        pid = json.loads(path.read_text())["pid"]
        try:
            os.killpg(pid, 15)
        except ProcessLookupError:
            pass
