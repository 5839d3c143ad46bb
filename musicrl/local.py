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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from musicrl.bus.local_server import LocalNatsServer
from musicrl.data.durable import write_durably
from musicrl.errors import InvalidRequest, MusicRLError
from musicrl.gateway.auth import Scope, new_api_key
from musicrl.gateway.keys_file import add_key
from musicrl.supervision import CrashLoop, RestartPolicy, Supervisor, exit_reason


__all__ = [  # the supervision names are part of this module's interface (they were defined here first)
    "CrashLoop",
    "LocalPlatform",
    "LocalPlatformConfig",
    "RestartPolicy",
    "Supervisor",
    "check_ports_free",
    "ensure_admin_key",
    "exit_reason",
    "run_local_platform",
]


logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0  # a real checkpoint may download for minutes before the generator is ready
POLL_S = 0.5  # how often `musicrl up` looks at its children: a crash is noticed within half a second
LOCAL_ADMIN_KEY_ID = "local-admin"
LOG_TAIL_LINES = 5  # lines of a service's log shown when it dies during start-up


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


SERVICES = ("generator", "recorder", "gateway", "rollout")  # started in this order, after nats-server
ServiceEnv = Mapping[str, Mapping[str, str]]  # service name → settings added to (or replacing) its defaults


class LocalPlatform:
    """Every service of the local platform, started and kept running while the context is open.

    ``with LocalPlatform(config) as platform:`` starts nats-server, the generator, the recorder, the gateway
    and the rollout controller, waits until the gateway and the generator are ready, then supervises them
    from a background thread: a service that exits is restarted after a backoff (``config.restarts``).
    Leaving the context stops them all, the gateway first and nats-server last.

    Args:
        config: Model, ports, state folder and restart policy.
        service_env: Extra settings per service (``generator``, ``recorder``, ``gateway``, ``rollout``), for
            a caller that runs the platform with other settings than ``musicrl up`` (the demo does).
        stop: Set by a signal handler to abandon the start-up (then ``__enter__`` raises KeyboardInterrupt).
    """

    def __init__(
        self, config: LocalPlatformConfig, service_env: ServiceEnv | None = None, stop: threading.Event | None = None
    ) -> None:
        unknown = set(service_env or {}) - set(SERVICES)
        if unknown:
            raise InvalidRequest(f"no service named {sorted(unknown)}; the services are {', '.join(SERVICES)}")
        self.config = config
        self.service_env = service_env or {}
        self.state = Path(config.state_dir).resolve()
        self.logs = self.state / "logs"
        self.stop = stop or threading.Event()
        self.supervisor = Supervisor(config.restarts, log_dir=self.logs)
        self.nats = LocalNatsServer(self.state / "nats", port=config.nats_port, log_path=self.logs / "nats.log")
        self.failure: MusicRLError | None = None  # why supervision gave up, if it did
        self._supervising: threading.Thread | None = None
        self._done = threading.Event()

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    @property
    def admin_token(self) -> str:
        """The local admin API key (every scope)."""
        return (self.state / "admin.key").read_text().strip()

    def __enter__(self) -> "LocalPlatform":
        check_ports_free(self.config)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.nats.start()
            assert self.nats.process is not None  # start() returns only with a running server
            self.supervisor.add("nats", self.nats.process, lambda: _relaunch_nats(self.nats))
            _start_services(self.config, self.state, self.nats.url, self.supervisor, self.service_env)
            if not _wait_ready(_readiness_urls(self.config), self.supervisor, self.stop, self.logs):
                raise KeyboardInterrupt
        except BaseException:
            self._stop_all()
            raise
        self._supervising = threading.Thread(target=self._supervise, name="local-platform", daemon=True)
        self._supervising.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._supervising is not None:
            self._supervising.join()
        self._stop_all()

    def _supervise(self) -> None:
        while not self._done.wait(POLL_S):
            try:
                self.supervisor.check()
            except MusicRLError as e:
                self.failure = e
                self.stop.set()  # whoever waits on the platform learns at once
                return

    def _stop_all(self) -> None:
        self.supervisor.stop_all()  # the gateway first, nats-server last
        # the controller's canary generators run in sessions of their own, so as to outlive a restart of it
        from musicrl.rollout.local_target import stop_canaries

        for pid in stop_canaries(self.state):
            logger.info("stopped the canary generator (pid %d)", pid)
        self.nats.stop()


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
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalPlatform(config, stop=stop) as platform:
            logger.info("the listening page: %s/", platform.gateway_url)
            logger.info("API docs at /docs; the local admin API key is in %s", platform.state / "admin.key")
            logger.info("Ctrl-C stops everything; logs are in %s", platform.logs)
            stop.wait()
            if platform.failure is not None:
                raise platform.failure
    except KeyboardInterrupt:
        return  # stopped during start-up
    finally:
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


def _start_services(
    config: LocalPlatformConfig, state: Path, nats_url: str, supervisor: Supervisor, extra: ServiceEnv
) -> None:
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
    for service in SERVICES:
        env = {**environments[service], **extra.get(service, {})}

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
