"""``musicrl demo``: the closed loop on this machine (listeners, pipeline, canary), then its report.

musicrl demo [--taste brightness] [--rounds 1] [--comparisons 400] [--out-dir out/demo] ...
"""

import argparse
import signal
import sys
from typing import Any

from musicrl.demo.config import DemoConfig
from musicrl.extras import needs_extra
from musicrl.settings import add_config_flags, config_from


Commands = Any  # argparse's sub-parsers action, whose class is private


def add_demo_command(commands: Commands) -> None:
    """Add ``demo`` to the ``musicrl`` parser."""
    demo = commands.add_parser(
        "demo",
        help="the closed loop on this machine: simulated listeners vote, the pipeline retrains, the canary is judged",
    )
    add_config_flags(demo, DemoConfig)
    demo.set_defaults(command=_demo)


@needs_extra("dev")  # every service, kfp for the pipeline, and the nats-server binary
def _demo(args: argparse.Namespace) -> None:
    from musicrl.demo.loop import run_demo
    from musicrl.demo.report import text_report, write_report

    config = config_from(DemoConfig, args=args)
    # SIGTERM as Ctrl-C: the platform's services are stopped on the way out, not left running
    signal.signal(signal.SIGTERM, _interrupt)
    run = run_demo(config)
    page = write_report(run)
    sys.stdout.write(text_report(run) + f"\nreport: {page}\n")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
