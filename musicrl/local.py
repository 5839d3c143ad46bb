"""Run the whole platform on this machine: nats-server, the generator, the recorder, the gateway and the rollout
controller.

``make run`` (``musicrl up``) starts each service as its own process, on loopback, exactly as it runs in a
pod, with state kept under one folder across runs: the JetStream store, clips, the Parquet dataset, logs,
the gateway's secret and a local admin API key.

Like Kubernetes, ``musicrl up`` keeps the services running: one that exits is restarted after an
exponential backoff (:class:`RestartPolicy`), and only a service that keeps crashing stops the platform.
"""

import errno
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from musicrl.bus.local_server import LocalNatsServer
from musicrl.data.durable import write_durably
from musicrl.errors import InvalidRequest, MusicRLError
from musicrl.gateway.auth import Scope, new_api_key
from musicrl.gateway.keys_file import add_key


logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0  # a real checkpoint may download for minutes before the generator is ready
POLL_S = 0.5  # how often `musicrl up` looks at its children: a crash is noticed within half a second
STOP_TIMEOUT_S = 30.0  # a service's graceful stop (the recorder writes its last batch) before SIGKILL
LOCAL_ADMIN_KEY_ID = "local-admin"
LOG_TAIL_LINES = 5  # lines of a service's log shown when it dies during start-up

Launcher = Callable[[], subprocess.Popen[bytes]]  # starts a replacement of a supervised process


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When ``musicrl up`` restarts a service that exited, and when it gives up (Kubernetes' CrashLoopBackOff).

    The n-th crash in a row waits ``restart_backoff_s * 2**(n - 1)`` seconds, at most ``restart_backoff_max_s``,
    before the restart. A crash counts as "in a row" when the run it ends was shorter than ``healthy_after_s``;
    a longer run starts a new count. The ``max_crashes``-th crash in a row stops the whole platform.

    Attributes:
        restart_backoff_s: Wait before the first restart, in seconds.
        restart_backoff_max_s: Longest wait before a restart, in seconds.
        healthy_after_s: A run at least this long, in seconds, resets the crash count.
        max_crashes: Crashes in a row after which ``musicrl up`` stops everything.
    """

    restart_backoff_s: float = 1.0  # Kubernetes waits 10 s; locally the recorder should be back at once
    restart_backoff_max_s: float = 30.0  # Kubernetes caps at 300 s; a laptop user would think it hung
    healthy_after_s: float = 60.0  # a minute up is not a crash loop (Kubernetes says 10 min; local runs are short)
    max_crashes: int = 5  # 1 + 2 + 4 + 8 s of backoff: ~15 s of trying before the platform gives up

    def __post_init__(self) -> None:
        if not self.restart_backoff_s > 0:
            raise InvalidRequest(
                f"restart_backoff_s must be a positive number of seconds, got {self.restart_backoff_s}"
            )
        if not self.restart_backoff_max_s >= self.restart_backoff_s:
            raise InvalidRequest(
                f"restart_backoff_max_s ({self.restart_backoff_max_s}) must be at least restart_backoff_s "
                f"({self.restart_backoff_s}); raise restart_backoff_max_s"
            )
        if not self.healthy_after_s > 0:
            raise InvalidRequest(f"healthy_after_s must be a positive number of seconds, got {self.healthy_after_s}")
        if self.max_crashes < 1:
            raise InvalidRequest(f"max_crashes must be >= 1, got {self.max_crashes}")

    def backoff_s(self, crashes: int) -> float:
        """Seconds to wait before restarting a service after its ``crashes``-th crash in a row (1 or more)."""
        return min(self.restart_backoff_max_s, self.restart_backoff_s * 2.0 ** min(crashes - 1, 64))


@dataclass(frozen=True, slots=True)
class LocalPlatformConfig:
    """Where the local platform keeps its state, which ports it uses and how it restarts crashed services.

    Attributes:
        model_uri: The policy the generator serves.
        state_dir: Folder for the JetStream store, clips, dataset, logs and secrets (kept across runs).
        gateway_port: The gateway's (and the listening page's) port.
        generator_http_port: The generator's V2 REST port.
        generator_grpc_port: The generator's V2 gRPC port.
        nats_port: The NATS client port.
        recorder_metrics_port: The recorder's Prometheus port.
        rollout_metrics_port: The rollout controller's Prometheus port.
        restarts: When a service that exited is restarted, and when ``musicrl up`` gives up.
    """

    model_uri: str = "toy://musicgen"  # offline: trained here on the toy world, so the prompt matters
    state_dir: str = ".musicrl"
    gateway_port: int = 8000
    generator_http_port: int = 8080
    generator_grpc_port: int = 8081
    nats_port: int = 4222  # NATS' default
    recorder_metrics_port: int = 9102
    rollout_metrics_port: int = 9103
    restarts: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        if not self.state_dir:
            raise InvalidRequest("state_dir is required, for example .musicrl")
        ports = self.ports()
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise InvalidRequest(f"{name} must be between 1 and 65535, got {port}")
        for name, port in ports.items():
            others = [other for other, p in ports.items() if p == port and other != name]
            if others:
                raise InvalidRequest(f"{name} and {others[0]} are both {port}; give each service its own port")

    def ports(self) -> dict[str, int]:
        """Every port the platform listens on, by field name (``gateway_port``, ...)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_port")}


_PORT_USERS = {  # field name: what listens on it, as the console names it
    "gateway_port": "gateway",
    "generator_http_port": "generator HTTP",
    "generator_grpc_port": "generator gRPC",
    "nats_port": "nats-server",
    "recorder_metrics_port": "recorder metrics",
    "rollout_metrics_port": "rollout controller metrics",
}


def check_ports_free(config: LocalPlatformConfig) -> None:
    """Refuse to start when a port the platform needs is taken, naming the port, its service and the flag.

    Each port is tried by binding 127.0.0.1:port, as the services do once started; without this check the
    cause of a service failing to start shows only in its log file.

    Args:
        config: The ports to check.

    Raises:
        MusicRLError: A port is in use (or may not be bound by this user).
    """
    for name, port in config.ports().items():
        flag = "--" + name.replace("_", "-")
        with socket.socket() as probe:
            # as the servers do: a port left in TIME_WAIT by the previous run can be bound again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as e:
                what = _PORT_USERS.get(name, name)
                if e.errno == errno.EADDRINUSE:
                    raise MusicRLError(f"port {port} is in use ({what}); stop what uses it or pass {flag}") from e
                raise MusicRLError(f"cannot listen on port {port} ({what}): {e.strerror}; pass {flag}") from e


class CrashLoop:
    """One service's count of crashes in a row, and the backoff it earns (see :class:`RestartPolicy`).

    Args:
        policy: The restart policy.
        started_at: When the service was last started, in seconds of the supervisor's clock.
    """

    def __init__(self, policy: RestartPolicy, started_at: float) -> None:
        self.policy = policy
        self.started_at = started_at
        self.crashes = 0

    def started(self, now: float) -> None:
        """Note that the service was (re)started at ``now``."""
        self.started_at = now

    def crashed(self, now: float) -> float | None:
        """Count an exit at ``now``.

        Args:
            now: When the exit was seen, on the same clock as ``started_at``.

        Returns:
            Seconds to wait before the restart, or None when this was the ``max_crashes``-th crash in a row.
        """
        if now - self.started_at >= self.policy.healthy_after_s:
            self.crashes = 0
        self.crashes += 1
        if self.crashes >= self.policy.max_crashes:
            return None
        return self.policy.backoff_s(self.crashes)


@dataclass(slots=True)
class _Supervised:
    relaunch: Launcher
    process: subprocess.Popen[bytes]
    crash_loop: CrashLoop
    restarts: int = 0
    restart_at: float | None = None  # set while it waits out its backoff


class Supervisor:
    """Keeps a set of processes running: restarts one that exits, after a backoff, and gives up on a crash loop.

    Args:
        policy: When to restart and when to give up.
        clock: Monotonic seconds; a test passes its own so that it need not sleep through a backoff.
        log_dir: Where each service's ``<name>.log`` is, for the give-up message (None: not mentioned).
    """

    def __init__(
        self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic, log_dir: Path | None = None
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.log_dir = log_dir
        self.services: dict[str, _Supervised] = {}

    def add(self, name: str, process: subprocess.Popen[bytes], relaunch: Launcher) -> None:
        """Supervise ``process`` (already started) as ``name``; ``relaunch`` starts a replacement.

        Services are stopped in the reverse order of their addition.
        """
        self.services[name] = _Supervised(relaunch, process, CrashLoop(self.policy, self.clock()))

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The current process of ``name`` (it changes on each restart)."""
        return self.services[name].process

    def exited(self) -> dict[str, int]:
        """The exit code of each service whose current process has exited, by name."""
        codes = {name: s.process.poll() for name, s in self.services.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def check(self) -> None:
        """Restart each service whose backoff is over, and schedule the restart of each that has just exited.

        Raises:
            MusicRLError: A service crashed ``policy.max_crashes`` times in a row.
        """
        now = self.clock()
        for name, service in self.services.items():
            if service.restart_at is not None:
                if now >= service.restart_at:
                    self._restart(name, service)
            elif (code := service.process.poll()) is not None:
                self._schedule_restart(name, service, code, now)

    def _schedule_restart(self, name: str, service: _Supervised, code: int, now: float) -> None:
        delay = service.crash_loop.crashed(now)
        if delay is None:
            where = f"; see {self.log_dir / f'{name}.log'}" if self.log_dir else ""
            raise MusicRLError(
                f"{name} {exit_reason(code)}: {self.policy.max_crashes} crashes in a row, each less than "
                f"{self.policy.healthy_after_s:g} s after its start; stopping everything{where}"
            )
        service.restart_at = now + delay
        logger.warning("%s %s; restarting in %g s (restart %d)", name, exit_reason(code), delay, service.restarts + 1)

    def _restart(self, name: str, service: _Supervised) -> None:
        service.restarts += 1
        service.restart_at = None
        service.process = service.relaunch()
        service.crash_loop.started(self.clock())  # after the launch, which may wait (nats-server's does)
        logger.info("restarted %s (pid %d)", name, service.process.pid)

    def stop_all(self) -> None:
        """Stop every service, the last added first: SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``."""
        for name, service in reversed(self.services.items()):
            _stop(name, service.process)


def exit_reason(code: int) -> str:
    """A process's exit status in words: ``exited with code 3`` or ``was killed by SIGKILL``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def run_local_platform(config: LocalPlatformConfig) -> None:
    """Start every service and keep them running until SIGINT or SIGTERM, then stop them all in order.

    A service that exits is restarted after a backoff (``config.restarts``); one that keeps crashing stops
    everything. A service that exits before the platform is first ready stops everything at once: such a
    crash comes from a flag, a port or a model URI, and restarting would only repeat it.

    Args:
        config: Model, ports, state folder and restart policy.

    Raises:
        MusicRLError: A port is taken, a service exited during start-up, or a service crashed
            ``config.restarts.max_crashes`` times in a row.
    """
    check_ports_free(config)
    state = Path(config.state_dir).resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    supervisor = Supervisor(config.restarts, log_dir=logs)
    nats = LocalNatsServer(state / "nats", port=config.nats_port, log_path=logs / "nats.log")
    try:
        nats.start()
        assert nats.process is not None  # start() returns only with a running server
        supervisor.add("nats", nats.process, lambda: _relaunch_nats(nats))
        _start_services(config, state, nats.url, supervisor)
        if not _wait_ready(_readiness_urls(config), supervisor, stop, logs):
            return
        logger.info("the listening page: http://127.0.0.1:%d/", config.gateway_port)
        logger.info("API docs at /docs; the local admin API key is in %s", state / "admin.key")
        logger.info("Ctrl-C stops everything; logs are in %s", logs)
        while not stop.wait(POLL_S):
            supervisor.check()
    finally:
        supervisor.stop_all()  # the gateway first, nats-server last
        nats.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _relaunch_nats(nats: LocalNatsServer) -> subprocess.Popen[bytes]:
    try:
        nats.start()
    except MusicRLError as e:
        # a failed restart is one more crash: the supervisor sees the exited process and backs off again
        logger.warning("%s", e)
    assert nats.process is not None  # start() sets it before it can fail
    return nats.process


def _start_services(config: LocalPlatformConfig, state: Path, nats_url: str, supervisor: Supervisor) -> None:
    common = {"MUSICRL_NATS_URL": nats_url, "MUSICRL_HOST": "127.0.0.1"}
    environments = {
        "generator": {
            **common,
            "MUSICRL_MODEL_URI": config.model_uri,
            "MUSICRL_HTTP_PORT": str(config.generator_http_port),
            "MUSICRL_GRPC_PORT": str(config.generator_grpc_port),
        },
        "recorder": {
            **common,
            "MUSICRL_DATASET_URL": str(state / "dataset"),
            "MUSICRL_METRICS_PORT": str(config.recorder_metrics_port),
        },
        "gateway": {**common, **_gateway_env(config, state)},
        # `musicrl rollout start` serves a canary as a second generator process, which this controller starts
        "rollout": {
            **common,
            "MUSICRL_TARGET": "local",
            "MUSICRL_STATE_DIR": str(state),
            "MUSICRL_METRICS_PORT": str(config.rollout_metrics_port),
        },
    }
    for service, env in environments.items():

        def launch(service: str = service, env: Mapping[str, str] = env) -> subprocess.Popen[bytes]:
            return _spawn(service, state, env)

        supervisor.add(service, launch(), launch)


def _gateway_env(config: LocalPlatformConfig, state: Path) -> dict[str, str]:
    return {
        "MUSICRL_GENERATOR_URL": f"127.0.0.1:{config.generator_http_port}",
        "MUSICRL_CLIP_STORE_URL": str(state / "clips"),
        "MUSICRL_SECRET_KEY": _persistent_secret(state / "secret.key"),
        "MUSICRL_API_KEYS_FILE": str(ensure_admin_key(state)),
        "MUSICRL_STABLE_MODEL_URI": config.model_uri,
        "MUSICRL_ENVIRONMENT": "development",  # plain http on loopback: session cookies without Secure
        "MUSICRL_PORT": str(config.gateway_port),
    }


def _persistent_secret(path: Path) -> str:
    if not path.exists():
        write_durably(str(path), secrets.token_urlsafe(32).encode())  # owner-only from the start (mkstemp)
    return path.read_text().strip()


def ensure_admin_key(state: Path) -> Path:
    """Make sure the keys file holds a ``local-admin`` key with every scope, its token kept in ``admin.key``.

    An existing keys file is never replaced: when ``admin.key`` is missing, a new local-admin entry takes the
    place of the old one (if any) and every other entry is kept. Both files are written atomically.

    Args:
        state: The platform's state folder.

    Returns:
        The keys file, ``<state>/api-keys.json``.

    Raises:
        InvalidRequest: The existing keys file is not a JSON list of entries (it is left as it is).
    """
    keys_file, key_file = state / "api-keys.json", state / "admin.key"
    if keys_file.exists() and key_file.exists():
        return keys_file
    token, key = new_api_key(LOCAL_ADMIN_KEY_ID, list(Scope))
    # the keys file first: a crash before admin.key exists leaves an entry that the next run replaces
    kept = add_key(keys_file, key)
    write_durably(str(key_file), (token + "\n").encode())
    logger.info("new %s API key in %s (%d other keys kept in %s)", LOCAL_ADMIN_KEY_ID, key_file, kept, keys_file)
    return keys_file


def _spawn(service: str, state: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with (state / "logs" / f"{service}.log").open("ab") as log:
        logger.info("starting the %s (log: %s)", service, log.name)
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            # own session: a terminal's Ctrl-C reaches only `musicrl up`, which stops the services in order
            start_new_session=True,
        )


def _readiness_urls(config: LocalPlatformConfig) -> list[str]:
    # the generator's own probe too: the gateway's /readyz may answer before the model is loaded
    return [
        f"http://127.0.0.1:{config.gateway_port}/readyz",
        f"http://127.0.0.1:{config.generator_http_port}/v2/health/ready",
    ]


def _wait_ready(urls: list[str], supervisor: Supervisor, stop: threading.Event, logs: Path) -> bool:
    """Wait until every one of ``urls`` has answered 200 (True) or a stop is requested (False)."""
    pending = list(urls)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        exited = supervisor.exited()
        if exited:
            name, code = next(iter(exited.items()))
            log = logs / f"{name}.log"
            raise MusicRLError(f"{name} {exit_reason(code)} during start-up; the end of {log}:\n{_tail(log)}")
        pending = [url for url in pending if not _answers_200(url)]
        if not pending:
            return True
        if stop.wait(POLL_S):
            return False
    raise MusicRLError(f"the platform was not ready after {READY_TIMEOUT_S:.0f} s ({', '.join(pending)})")


def _answers_200(url: str) -> bool:
    # here, not at the top: the `musicrl` parser reads LocalPlatformConfig in images without requests
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:  # not listening yet: start-up is what is being waited for
        return False


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read it: {e})"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _stop(name: str, child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
            child.kill()
            child.wait()
