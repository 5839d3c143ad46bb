"""Run the whole platform on this machine: nats-server, the generator, the recorder and the gateway.

``make run`` (``musicrl up``) starts each service as its own process, on loopback, exactly as it runs in a
pod, with state kept under one folder across runs: the JetStream store, clips, the Parquet dataset, logs,
the gateway's secret and a local admin API key.
"""

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from musicrl.bus.local_server import LocalNatsServer
from musicrl.errors import MusicRLError
from musicrl.gateway.auth import Scope, new_api_key


logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0  # a real checkpoint may download for minutes before the generator is ready


@dataclass(frozen=True, slots=True)
class LocalPlatformConfig:
    """Where the local platform keeps its state and which ports it uses.

    Attributes:
        model_uri: The policy the generator serves.
        state_dir: Folder for the JetStream store, clips, dataset, logs and secrets (kept across runs).
        gateway_port: The gateway's (and the listening page's) port.
        generator_http_port: The generator's V2 REST port.
        generator_grpc_port: The generator's V2 gRPC port.
        nats_port: The NATS client port.
        recorder_metrics_port: The recorder's Prometheus port.
    """

    model_uri: str = "tiny://musicgen?seed=0"  # offline: a real architecture with seeded weights
    state_dir: str = ".musicrl"
    gateway_port: int = 8000
    generator_http_port: int = 8080
    generator_grpc_port: int = 8081
    nats_port: int = 4222  # NATS' default
    recorder_metrics_port: int = 9102


def run_local_platform(config: LocalPlatformConfig) -> None:
    """Start every service, wait until SIGINT/SIGTERM or until one of them dies, then stop them all."""
    state = Path(config.state_dir).resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalNatsServer(state / "nats", port=config.nats_port, log_path=state / "logs" / "nats.log") as nats:
        with _services(config, state, nats.url) as children:
            logger.info("the listening page: http://127.0.0.1:%d/", config.gateway_port)
            logger.info("API docs at /docs; the local admin API key is in %s", state / "admin.key")
            logger.info("Ctrl-C stops everything; logs are in %s", state / "logs")
            while not stop.wait(0.5):
                dead = [name for name, child in children.items() if child.poll() is not None]
                if dead:
                    raise MusicRLError(f"{', '.join(dead)} stopped; see {state / 'logs'}")


@contextlib.contextmanager
def _services(config: LocalPlatformConfig, state: Path, nats_url: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    children: dict[str, subprocess.Popen[bytes]] = {}
    common = {"MUSICRL_NATS_URL": nats_url, "MUSICRL_HOST": "127.0.0.1"}
    try:
        children["generator"] = _spawn(
            "generator",
            state,
            {
                **common,
                "MUSICRL_MODEL_URI": config.model_uri,
                "MUSICRL_HTTP_PORT": str(config.generator_http_port),
                "MUSICRL_GRPC_PORT": str(config.generator_grpc_port),
            },
        )
        children["recorder"] = _spawn(
            "recorder",
            state,
            {
                **common,
                "MUSICRL_DATASET_URL": str(state / "dataset"),
                "MUSICRL_METRICS_PORT": str(config.recorder_metrics_port),
            },
        )
        children["gateway"] = _spawn("gateway", state, {**common, **_gateway_env(config, state)})
        _wait_ready(f"http://127.0.0.1:{config.gateway_port}/readyz", children)
        yield children
    finally:
        for name, child in reversed(children.items()):  # the gateway first, nats-server last
            _stop(name, child)


def _gateway_env(config: LocalPlatformConfig, state: Path) -> dict[str, str]:
    return {
        "MUSICRL_GENERATOR_URL": f"127.0.0.1:{config.generator_http_port}",
        "MUSICRL_CLIP_STORE_URL": str(state / "clips"),
        "MUSICRL_SECRET_KEY": _persistent_secret(state / "secret.key"),
        "MUSICRL_API_KEYS_FILE": str(_admin_keys_file(state)),
        "MUSICRL_STABLE_MODEL_URI": config.model_uri,
        "MUSICRL_ENVIRONMENT": "development",  # plain http on loopback: session cookies without Secure
        "MUSICRL_PORT": str(config.gateway_port),
    }


def _persistent_secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _admin_keys_file(state: Path) -> Path:
    """A keys file with one local key holding every scope; the key itself is kept in ``admin.key``."""
    keys_file, key_file = state / "api-keys.json", state / "admin.key"
    if not keys_file.exists() or not key_file.exists():
        token, key = new_api_key("local-admin", list(Scope))
        key_file.write_text(token + "\n")
        key_file.chmod(0o600)
        keys_file.write_text(json.dumps([key.to_wire()], indent=2))
    return keys_file


def _spawn(service: str, state: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    log = (state / "logs" / f"{service}.log").open("ab")
    logger.info("starting the %s (log: %s)", service, log.name)
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        # own session: a terminal's Ctrl-C reaches only `musicrl up`, which stops the services in order
        start_new_session=True,
    )


def _wait_ready(url: str, children: Mapping[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [name for name, child in children.items() if child.poll() is not None]
        if dead:
            raise MusicRLError(f"{', '.join(dead)} exited during start-up; see its log")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise MusicRLError(f"the platform was not ready after {READY_TIMEOUT_S:.0f} s ({url})")


def _stop(name: str, child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in 30 s; killing it", name)
            child.kill()
            child.wait()
