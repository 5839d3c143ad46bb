"""The ``local`` rollout target: a canary generator as a process on this machine, next to ``musicrl up``'s.

A canary is a second generator process (``python -m services.generator``) on the first free port from
``canary_first_port``, in its own session so that it outlives a restart of the controller, with its log under
``<state>/logs``. What it is, is kept in ``<state>/canaries/<rollout id>.json`` (pid and URL), so a restarted
controller finds the process it started rather than starting another. A promoted canary keeps serving as the
stable policy; a canary rolled back, or a promoted one that a later promotion replaced, is stopped.

A canary given by URL (``musicrl rollout start --canary-url``) is adopted as it is and never stopped.
"""

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from musicrl.data.dataset import write_durably
from musicrl.rollout.config import LocalTargetConfig
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.rollout.target import CanarySpec


logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 15.0  # a generator stops in about a second; a stuck one is killed


class LocalTarget:
    """Serves canaries as local generator processes.

    Args:
        config: Where state lives and which ports to use.
        model_name: The V2 model name the generators serve.
        nats_url: Passed to the generators it starts.
    """

    def __init__(self, config: LocalTargetConfig, model_name: str = "generator", nats_url: str = "") -> None:
        self.config = config
        self.model_name = model_name
        self.nats_url = nats_url
        self.folder = Path(config.state_dir) / "canaries"
        self._retiring: set[asyncio.Task[None]] = set()

    async def check_idle(self) -> None:
        """Nothing to check locally: the rollout record is the one guard, and it is checked by ``start``."""

    async def start_canary(self, canary: CanarySpec, stable: PolicyEndpoint) -> PolicyEndpoint:
        if canary.url:
            return PolicyEndpoint(canary.url, stable.model_name, canary.model_uri, canary.version)
        known = self._read(canary.rollout_id)
        if known is not None and _alive(int(known["pid"])):
            return PolicyEndpoint(str(known["url"]), self.model_name, canary.model_uri, canary.version)
        return await asyncio.to_thread(self._spawn, canary)

    def stable_during_canary(self, stable: PolicyEndpoint) -> PolicyEndpoint:
        return stable  # the stable generator process serves only the stable policy

    async def canary_ready(self, canary: PolicyEndpoint) -> bool:
        url = f"http://{canary.url}/v2/models/{canary.model_name}/ready"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as session:
                async with session.get(url) as reply:
                    return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def promote(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> PolicyEndpoint:
        # The controller rewrites the routing table once this returns, and the gateway follows within a second:
        # stopping the replaced generator now would cut the clips it is generating (503s). It is stopped once
        # the gateway has moved and those clips are done.
        task = asyncio.create_task(self._retire(stable.url))
        self._retiring.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._retiring.discard)
        return canary

    async def _retire(self, url: str) -> None:
        await asyncio.sleep(self.config.retire_after_s)
        await asyncio.to_thread(self._stop_url, url)  # only a process this target started

    async def rollback(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> None:
        await asyncio.to_thread(self._stop_url, canary.url)

    def _spawn(self, canary: CanarySpec) -> PolicyEndpoint:
        http_port = _free_port_pair(self.config.canary_host, self.config.canary_first_port)
        url = f"{self.config.canary_host}:{http_port}"
        env = {
            "MUSICRL_MODEL_URI": canary.model_uri,
            "MUSICRL_MODEL_NAME": self.model_name,
            "MUSICRL_HOST": self.config.canary_host,
            "MUSICRL_HTTP_PORT": str(http_port),
            "MUSICRL_GRPC_PORT": str(http_port + 1),
            **({"MUSICRL_NATS_URL": self.nats_url} if self.nats_url else {}),
        }
        logs = Path(self.config.state_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"canary-{canary.rollout_id}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.generator"],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives a restart of the controller, which finds it again by its file
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": process.pid, "url": url, "model_uri": canary.model_uri}
        write_durably(str(self.folder / f"{canary.rollout_id}.json"), json.dumps(record).encode())
        logger.info(
            "canary generator %s started (pid %d) serving %s; log %s", url, process.pid, canary.model_uri, log.name
        )
        return PolicyEndpoint(url, self.model_name, canary.model_uri, canary.version)

    def _read(self, rollout_id: str) -> dict[str, Any] | None:
        path = self.folder / f"{rollout_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _stop_url(self, url: str) -> None:
        """Stop the generator this target started at ``url``, if any (and forget it)."""
        if not self.folder.exists():
            return
        for path in self.folder.glob("*.json"):
            record = json.loads(path.read_text())
            if record.get("url") == url:
                _stop(int(record["pid"]))
                path.unlink()
                logger.info("canary generator %s (pid %d) stopped", url, record["pid"])


def stop_canaries(state_dir: str | Path) -> list[int]:
    """Stop every canary generator started under ``state_dir`` (for ``musicrl up`` stopping everything).

    A promoted canary serves as the stable policy until the platform stops; this stops it too.

    Returns:
        The process ids stopped.
    """
    folder = Path(state_dir) / "canaries"
    stopped = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        pid = int(json.loads(path.read_text())["pid"])
        if _alive(pid):
            _stop(pid)
            stopped.append(pid)
        path.unlink()
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reuses the pid
        return False
    return True


def _stop(pid: int) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not gone within ``STOP_TIMEOUT_S``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(int(STOP_TIMEOUT_S * 10)):
        try:
            waited, _status = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            waited = 0
        if waited or not _alive(pid):
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


def _free_port_pair(host: str, first: int) -> int:
    """The first port from ``first`` such that it and the next one are free (REST and gRPC)."""
    for port in range(first, 65534, 2):
        if _free(host, port) and _free(host, port + 1):
            return port
    raise OSError(f"no two free ports from {first} on {host}")


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
