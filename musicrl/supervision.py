"""Keep a set of local processes running the way Kubernetes keeps pods running: restart one that exits after
an exponential backoff, and give up on a crash loop (Kubernetes' CrashLoopBackOff).
"""

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from musicrl.errors import InvalidRequest, MusicRLError


logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0  # a service's graceful stop (the recorder writes its last batch) before SIGKILL

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
            stop_process(name, service.process)


def exit_reason(code: int) -> str:
    """A process's exit status in words: ``exited with code 3`` or ``was killed by SIGKILL``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def stop_process(name: str, child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", name, STOP_TIMEOUT_S)
            child.kill()
            child.wait()
