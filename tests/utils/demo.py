"""``musicrl demo`` shortened for CI: fewer comparisons and RL steps than ``make demo``, the same code."""

import socket
from pathlib import Path

from musicrl.demo.config import DemoConfig
from musicrl.demo.loop import DemoRun, run_demo
from musicrl.demo.report import write_report
from tests.utils.processes import free_port


SHORT = {
    # 120 comparisons trained a preference model near chance in two of three first rounds (test accuracy 0.29
    # and 0.50 on ~15 pairs, against 0.73); at 160, CI saw both rounds of a run end undecided at 80 votes
    # (canary win rates 0.56 and 0.61) in two runs of four. The canary's lead comes from what the preference
    # model learned (one model finetuned three ways gained +0.80, +0.81 and +0.97 octave, 15 or 30 steps
    # alike), so a round starts from more votes, and the controller gets more to decide on.
    "comparisons": 240,
    "listener_temperature": 0.2,
    "canary_comparisons": 125,
    "rl_steps": 15,
    "rating_share": 0.35,
    "min_votes": 20,
    "max_votes": 100,
    "validation_fraction": 0.2,  # at 0.1, ~8 validation pairs ranked the epochs, and once none beat chance
    "measure_prompts": 32,  # 12 gave an interval of ±0.5 octave on a gain of 0.4; 32 gives about ±0.3
}


def short_demo(tmp_path: Path, **overrides) -> DemoRun:
    # ports from a free one: the demo takes it and the next dozen
    config = DemoConfig(out_dir=str(tmp_path / "demo"), first_port=_free_block(), **{**SHORT, **overrides})
    run = run_demo(config)
    write_report(run)
    return run


PORTS_USED = 8  # the demo's six ports, then the canary's pair


def _free_block() -> int:
    """A first port whose next PORTS_USED ports are all free now (another worker's platform may hold some)."""
    for _ in range(100):
        first = free_port()
        if first + PORTS_USED <= 65535 and all(_bindable(port) for port in range(first, first + PORTS_USED)):
            return first
    raise RuntimeError(f"no {PORTS_USED} consecutive free ports found on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
