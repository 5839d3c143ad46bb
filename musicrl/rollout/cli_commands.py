"""``musicrl rollout status|start|analyse|promote|rollback``: the manual levers and the pipeline's entry point.

    musicrl rollout start v4 --registry-url URL --canary-share 0.5 [--canary-url HOST:PORT] [--wait-s 600]
    musicrl rollout status                      # the current rollout record as JSON
    musicrl rollout analyse                     # evidence, statistic, decision and reason (Markdown)
    musicrl rollout promote --by WHO --reason WHY
    musicrl rollout rollback --by WHO --reason WHY

Every command takes ``--nats-url`` (or ``MUSICRL_NATS_URL``). ``start`` checks that the version exists and
its checkpoint is there, asks the controller to serve it, and with ``--wait-s`` waits for the decision.
"""

import argparse
import asyncio
import dataclasses
import getpass
import json
import sys
from typing import Any

from musicrl.config import BusConfig
from musicrl.errors import InvalidRequest
from musicrl.extras import needs_extra
from musicrl.rollout.decision import Action, DecisionRule
from musicrl.rollout.record import Status, check_canary_share
from musicrl.settings import add_config_flags, config_from


Commands = Any  # argparse's sub-parsers action, whose class is private
DECIDED = (Status.PROMOTED, Status.ROLLED_BACK)
LEVER_WAIT_S = 60.0  # the controller takes a lever up within a second; a minute means it is not running


def add_rollout_commands(commands: Commands) -> None:
    rollout = commands.add_parser("rollout", help="canary rollouts: start, watch, analyse, promote, roll back")
    actions = rollout.add_subparsers(required=True, metavar="ACTION")

    status = actions.add_parser("status", help="the current rollout record as JSON")
    add_config_flags(status, BusConfig)
    status.set_defaults(command=_status)

    start = actions.add_parser("start", help="serve a registered policy version as the canary")
    start.add_argument("version", help="the registered version (v4, 4 or latest)")
    start.add_argument("--registry-url", required=True, help="the policy registry (path, file://, s3://)")
    start.add_argument("--canary-share", type=float, default=0.5, help="share of comparisons with the canary")
    start.add_argument("--canary-url", default="", help="HOST:PORT of a canary already served, to adopt")
    start.add_argument("--by", default="", help="who starts it (default: the login name)")
    start.add_argument("--wait-s", type=float, default=0.0, help="wait this long for the decision (0: don't)")
    add_config_flags(start, BusConfig)
    start.set_defaults(command=_start)

    analyse = actions.add_parser("analyse", help="the evidence, the statistic, the decision and its reason")
    add_config_flags(analyse, BusConfig)
    add_config_flags(analyse, DecisionRule)
    analyse.set_defaults(command=_analyse)

    for name, action in (("promote", Action.PROMOTE), ("rollback", Action.ROLL_BACK)):
        lever = actions.add_parser(name, help=f"{name} the current canary by hand (recorded with who and why)")
        lever.add_argument("--by", default="", help="who pulls the lever (default: the login name)")
        lever.add_argument("--reason", required=True, help="why, in a sentence")
        add_config_flags(lever, BusConfig)
        lever.set_defaults(command=_lever, action=action)


def _who(given: str) -> str:
    return given.strip() or getpass.getuser()


@needs_extra("rollout")
def _status(args: argparse.Namespace) -> None:
    from musicrl.rollout.levers import open_bus

    async def read() -> None:
        async with open_bus(config_from(BusConfig, args=args)) as bus:
            record, revision = await bus.store.get()
        body = {"revision": revision, **dataclasses.asdict(record)} if record else None
        sys.stdout.write(json.dumps(body, indent=2) + "\n")

    asyncio.run(read())


@needs_extra("rollout")
def _start(args: argparse.Namespace) -> None:
    from musicrl.pipeline.registry import PolicyRegistry
    from musicrl.rollout import levers

    if not args.wait_s >= 0:
        raise InvalidRequest(f"--wait-s must be 0 or more seconds, got {args.wait_s}")
    check_canary_share(args.canary_share)  # before anything is looked up or connected to
    registry = PolicyRegistry(args.registry_url)
    version = registry.latest() if args.version == "latest" else registry.get(args.version)
    if version is None:
        raise InvalidRequest(f"the registry at {args.registry_url} holds no policy versions yet")
    if not args.canary_url:
        levers.check_checkpoint(version.model_uri)

    async def begin() -> None:
        async with levers.open_bus(config_from(BusConfig, args=args)) as bus:
            record = await levers.start(
                bus, version.model_uri, version.version, args.canary_share, _who(args.by), args.canary_url
            )
            sys.stderr.write(f"rollout {record.id}: {version.version} ({version.model_uri}) requested\n")
            if args.wait_s:
                record = await levers.wait_until(bus, record.id, DECIDED, args.wait_s)
        sys.stdout.write(json.dumps(dataclasses.asdict(record), indent=2) + "\n")

    asyncio.run(begin())


@needs_extra("rollout")
def _analyse(args: argparse.Namespace) -> None:
    from musicrl.rollout import levers
    from musicrl.rollout.report import markdown

    rule = config_from(DecisionRule, args=args)

    async def read() -> None:
        async with levers.open_bus(config_from(BusConfig, args=args)) as bus:
            record, tally, decision = await levers.analyse(bus, rule)
        sys.stdout.write(markdown(record, tally, decision, rule))

    asyncio.run(read())


@needs_extra("rollout")
def _lever(args: argparse.Namespace) -> None:
    from musicrl.errors import UpstreamUnavailable
    from musicrl.rollout import levers

    async def pull() -> None:
        async with levers.open_bus(config_from(BusConfig, args=args)) as bus:
            record = await levers.pull(bus, args.action, _who(args.by), args.reason)
            record = await levers.wait_until(bus, record.id, DECIDED, LEVER_WAIT_S)
        if not record.status.finished:
            raise UpstreamUnavailable(
                f"the rollout controller did not carry the {args.action.value} out within {LEVER_WAIT_S:.0f} s; "
                "it will when it runs (`musicrl serve rollout`)"
            )
        sys.stdout.write(json.dumps(dataclasses.asdict(record), indent=2) + "\n")

    asyncio.run(pull())
