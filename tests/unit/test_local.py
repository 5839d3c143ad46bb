"""The local platform's pieces that need no running platform: restart policy, supervisor, ports, API keys."""

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from musicrl.errors import InvalidRequest, MusicRLError
from musicrl.gateway.auth import KeyRing, Scope, new_api_key
from musicrl.local import (
    CrashLoop,
    LocalPlatformConfig,
    RestartPolicy,
    Supervisor,
    check_ports_free,
    ensure_admin_key,
    exit_reason,
)
from tests.utils.processes import free_port


CRASH = [sys.executable, "-c", "raise SystemExit(3)"]  # a service that dies at once, with a code to report
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]  # a service that stays up until stopped


class FakeClock:
    """Monotonic seconds that move only when the test says, so a backoff passes without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_from_one_second_and_is_capped() -> None:
    policy = RestartPolicy()

    assert [policy.backoff_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert RestartPolicy(restart_backoff_s=0.5, restart_backoff_max_s=3).backoff_s(1000) == 3  # no overflow


def test_crash_loop_backs_off_then_gives_up_on_the_fifth_quick_crash() -> None:
    loop = CrashLoop(RestartPolicy(), started_at=0.0)
    delays = []
    now = 0.0
    for _ in range(5):
        now += 2.0  # each run lasts 2 s: far below healthy_after_s
        delays.append(loop.crashed(now))
        now += delays[-1] or 0
        loop.started(now)

    assert delays == [1, 2, 4, 8, None]


def test_a_healthy_run_resets_the_crash_count() -> None:
    loop = CrashLoop(RestartPolicy(healthy_after_s=60), started_at=0.0)
    assert [loop.crashed(1.0), loop.crashed(2.0), loop.crashed(3.0)] == [1, 2, 4]
    loop.started(10.0)

    assert loop.crashed(70.0) == 1  # it ran 60 s: the next crash is the first of a new count
    loop.started(71.0)
    assert loop.crashed(72.0) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"restart_backoff_s": 0}, "restart_backoff_s must be a positive number of seconds, got 0"),
        ({"restart_backoff_s": 5, "restart_backoff_max_s": 2}, "restart_backoff_max_s (2) must be at least"),
        ({"healthy_after_s": -1}, "healthy_after_s must be a positive number of seconds, got -1"),
        ({"max_crashes": 0}, "max_crashes must be >= 1, got 0"),
    ],
)
def test_restart_policy_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        RestartPolicy(**kwargs)
    assert message in str(raised.value)


def test_exit_reason_names_the_signal() -> None:
    assert exit_reason(3) == "exited with code 3"
    assert exit_reason(-9) == "was killed by SIGKILL"


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(RestartPolicy(), clock=FakeClock(), log_dir=tmp_path)
    yield supervisor
    supervisor.stop_all()


def _crash_until_seen(supervisor: Supervisor, name: str) -> None:
    supervisor.process(name).wait(timeout=30)
    supervisor.check()


def test_supervisor_restarts_a_crashed_process_after_its_backoff(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    clock = supervisor.clock
    assert isinstance(clock, FakeClock)
    supervisor.add("recorder", subprocess.Popen(CRASH), lambda: subprocess.Popen(CRASH))
    first = supervisor.process("recorder")

    with caplog.at_level(logging.WARNING, logger="musicrl.local"):
        _crash_until_seen(supervisor, "recorder")
    assert "recorder exited with code 3; restarting in 1 s (restart 1)" in caplog.messages
    clock.now += 0.9
    supervisor.check()
    assert supervisor.process("recorder") is first  # still waiting out its backoff

    clock.now += 0.1
    supervisor.check()
    assert supervisor.process("recorder").pid != first.pid
    with caplog.at_level(logging.WARNING, logger="musicrl.local"):
        _crash_until_seen(supervisor, "recorder")
    assert "recorder exited with code 3; restarting in 2 s (restart 2)" in caplog.messages


def test_supervisor_gives_up_on_the_fifth_crash_in_a_row(supervisor: Supervisor, tmp_path: Path) -> None:
    clock = supervisor.clock
    assert isinstance(clock, FakeClock)
    supervisor.add("steady", subprocess.Popen(SLEEP), lambda: subprocess.Popen(SLEEP))
    supervisor.add("recorder", subprocess.Popen(CRASH), lambda: subprocess.Popen(CRASH))
    for backoff_s in (1, 2, 4, 8):
        _crash_until_seen(supervisor, "recorder")
        clock.now += backoff_s
        supervisor.check()  # the restart

    supervisor.process("recorder").wait(timeout=30)
    with pytest.raises(MusicRLError) as raised:
        supervisor.check()
    assert str(raised.value) == (
        "recorder exited with code 3: 5 crashes in a row, each less than 60 s after its start; "
        f"stopping everything; see {tmp_path / 'recorder.log'}"
    )
    assert supervisor.process("steady").poll() is None  # the others run until the caller stops them
    supervisor.stop_all()
    assert supervisor.process("steady").poll() is not None


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "field, what",
    [
        ("gateway_port", "gateway"),
        ("generator_http_port", "generator HTTP"),
        ("generator_grpc_port", "generator gRPC"),
        ("nats_port", "nats-server"),
        ("recorder_metrics_port", "recorder metrics"),
        ("rollout_metrics_port", "rollout controller metrics"),
    ],
)
def test_a_taken_port_is_named_with_its_service_and_flag(field: str, what: str, taken_port: int) -> None:
    ports = {name: free_port() for name in LocalPlatformConfig().ports()}
    config = LocalPlatformConfig(**{**ports, field: taken_port})

    with pytest.raises(MusicRLError) as raised:
        check_ports_free(config)
    flag = "--" + field.replace("_", "-")
    assert str(raised.value) == f"port {taken_port} is in use ({what}); stop what uses it or pass {flag}"


def test_free_ports_pass_the_check() -> None:
    check_ports_free(LocalPlatformConfig(**{name: free_port() for name in LocalPlatformConfig().ports()}))


def test_two_services_on_one_port_are_refused() -> None:
    with pytest.raises(InvalidRequest) as raised:
        LocalPlatformConfig(gateway_port=4222)
    assert str(raised.value) == "gateway_port and nats_port are both 4222; give each service its own port"


def test_a_missing_admin_key_adds_a_local_admin_entry_and_keeps_every_other_key(tmp_path: Path) -> None:
    _, partner = new_api_key("partner", [Scope.GENERATE])
    _, stale = new_api_key("local-admin", list(Scope))  # its token was in the admin.key that was deleted
    keys_file = tmp_path / "api-keys.json"
    keys_file.write_text(json.dumps([partner.to_wire(), stale.to_wire()]))

    assert ensure_admin_key(tmp_path) == keys_file

    entries = json.loads(keys_file.read_text())
    assert [e["id"] for e in entries] == ["partner", "local-admin"]
    assert entries[0] == partner.to_wire()
    assert entries[1]["sha256"] != stale.sha256
    token = (tmp_path / "admin.key").read_text().strip()
    caller = KeyRing.from_file(str(keys_file)).authenticate(f"Bearer {token}")
    assert caller.key_id == "local-admin" and caller.scopes == frozenset(Scope)
    assert (tmp_path / "admin.key").stat().st_mode & 0o077 == 0  # a secret: owner only
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written through a temp file


def test_existing_keys_and_admin_key_are_left_alone(tmp_path: Path) -> None:
    ensure_admin_key(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("api-keys.json", "admin.key")}

    ensure_admin_key(tmp_path)

    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_malformed_keys_file_is_refused_and_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "api-keys.json").write_text('[{"id": "partner", ')

    with pytest.raises(InvalidRequest) as raised:
        ensure_admin_key(tmp_path)
    assert "fix it or move it away (it is not overwritten)" in str(raised.value)
    assert (tmp_path / "api-keys.json").read_text() == '[{"id": "partner", '
    assert not (tmp_path / "admin.key").exists()
