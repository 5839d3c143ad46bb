"""Start platform services as real subprocesses on loopback for integration tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests


REPO_ROOT = Path(__file__).resolve().parents[2]


_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port this process has not handed out before.

    The kernel may give a just-closed port to the next bind, so two calls in a row can return the same
    port, and a test that takes one per service then starts two on it.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


@dataclass(frozen=True)
class ServiceProcess:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def model_server(
    module: str,
    env: Mapping[str, str],
    log_dir: Path,
    ready_model: str,
    args: Sequence[str] = (),
    timeout_s: float = 60,
) -> Iterator[ServiceProcess]:
    """Run ``python -m <module> <args>`` with MUSICRL_* settings in ``env`` until the model is ready; stop it after."""
    service = spawn_model_server(module, env, log_dir, args)
    try:
        _wait_ready(service, ready_model, timeout_s)
        yield service
    finally:
        stop_process(service.process, timeout_s=20)


def spawn_model_server(module: str, env: Mapping[str, str], log_dir: Path, args: Sequence[str] = ()) -> ServiceProcess:
    """Start ``python -m <module> <args>`` on free loopback ports and return at once (the caller stops it)."""
    http_port, grpc_port = free_port(), free_port()
    log_path = log_dir / f"{module.replace('.', '_')}-{http_port}.log"
    full_env = {
        **os.environ,
        "MUSICRL_HOST": "127.0.0.1",
        "MUSICRL_HTTP_PORT": str(http_port),
        "MUSICRL_GRPC_PORT": str(grpc_port),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return ServiceProcess(process, http_port, grpc_port, log_path)


def _wait_ready(service: ServiceProcess, model: str, timeout_s: float) -> None:
    wait_for_url(service, f"http://{service.http_url}/v2/models/{model}/ready", timeout_s)


@contextlib.contextmanager
def http_service(
    module: str, env: Mapping[str, str], log_dir: Path, ready_path: str = "/healthz", timeout_s: float = 60
) -> Iterator[ServiceProcess]:
    """Run ``python -m <module>`` (port from MUSICRL_PORT) until ``ready_path`` answers 200; stop it after."""
    port = int(env.get("MUSICRL_PORT") or free_port())
    log_path = log_dir / f"{module.replace('.', '_')}-{port}.log"
    full_env = {**os.environ, "MUSICRL_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1", **env, "MUSICRL_PORT": str(port)}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    service = ServiceProcess(process, port, 0, log_path)
    try:
        wait_for_url(service, f"http://127.0.0.1:{port}{ready_path}", timeout_s)
        yield service
    finally:
        stop_process(process, timeout_s=30)


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_url(service: ServiceProcess, url: str, timeout_s: float) -> None:
    """Wait until ``url`` answers 200; fail with the service's log if it exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {service.process.returncode}:\n{service.log()}")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s:\n{service.log()}")


class RestartableService:
    """``python -m <module>`` as a real subprocess a test can start, SIGKILL and start again.

    Each run logs to ``<log_dir>/<name>-<run>.log``.

    Args:
        module: The service module, e.g. ``services.recorder``.
        name: The logs' prefix.
        env: The whole environment of the process.
        log_dir: Where each run's output goes.
    """

    def __init__(self, module: str, name: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.module, self.name, self.env, self.log_dir = module, name, dict(env), log_dir
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.runs}.log"

    def start(self) -> "RestartableService":
        self.runs += 1
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 15) -> int:
        """SIGTERM and wait; returns the exit code (kills it and fails the wait if it hangs)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        """Every run's output, in order."""
        runs = range(1, self.runs + 1)
        return "\n".join((self.log_dir / f"{self.name}-{i}.log").read_text(errors="replace") for i in runs)


def export_triton_repository(out: Path, env: Mapping[str, str], args: Sequence[str] = ()) -> Path:
    """``musicrl triton export --out out ARGS`` with MUSICRL_* settings in ``env`` (a subprocess: the export
    reads the contract from the KServe modules, which must not be imported beside tritonclient.grpc)."""
    subprocess.run(
        [sys.executable, "-m", "musicrl", "triton", "export", "--out", str(out), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return out


@contextlib.contextmanager
def triton_server(repository: Path, log_dir: Path, timeout_s: float = 240) -> Iterator[ServiceProcess]:
    """``musicrl serve triton`` over ``repository`` (the local install) until every model is ready; stop it after."""
    http_port, grpc_port = free_port(), free_port()
    log_path = log_dir / f"tritonserver-{http_port}.log"
    ports = ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", "0"]
    command = [sys.executable, "-m", "musicrl", "serve", "triton", "--repository", str(repository), *ports]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    service = ServiceProcess(process, http_port, grpc_port, log_path)
    try:
        wait_for_url(service, f"http://{service.http_url}/v2/health/ready", timeout_s)  # strict: every model
        yield service
    finally:
        stop_process(process, timeout_s=30)
