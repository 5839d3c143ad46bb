"""``musicrl toyworld train``: rebuild the shipped toy models from seeds.

musicrl toyworld train [--seed 0] [--out-dir DIR] [--quick true] [--threads 2]
musicrl toyworld judge --policy-uri URI [--baseline-uri toy://musicgen] [--prompts 96] [--out FILE]
"""

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from musicrl.extras import needs_extra
from musicrl.settings import add_config_flags, config_from
from musicrl.toyworld.judge_config import JudgeConfig
from musicrl.toyworld.train_config import ToyWorldTrainConfig


Commands = Any  # argparse's sub-parsers action, whose class is private


def add_toyworld_commands(commands: Commands) -> None:
    """Add ``toyworld`` and its actions to the ``musicrl`` parser."""
    toyworld = commands.add_parser("toyworld", help="the small music world: train its codec, policy and CLAP")
    actions = toyworld.add_subparsers(required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train every toy model from seeds and write the manifest")
    add_config_flags(train, ToyWorldTrainConfig)
    train.set_defaults(command=_train)
    judge = actions.add_parser(
        "judge", help="compare a finetuned toy policy with its base: the world's probes and the rewards"
    )
    add_config_flags(judge, JudgeConfig)
    judge.add_argument("--out", type=Path, help="also write the comparison as JSON to this file")
    judge.set_defaults(command=_judge)


def reproducing_command(config: ToyWorldTrainConfig) -> str:
    """The command that trains the same models again (the output folder aside), for the manifest."""
    flags = ["musicrl", "toyworld", "train"]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name != "out_dir" and value != field.default:
            flags += [
                f"--{field.name.replace('_', '-')}",
                str(value).lower() if isinstance(value, bool) else str(value),
            ]
    return shlex.join(flags)


@needs_extra("train")
def _train(args: argparse.Namespace) -> None:
    from musicrl.toyworld.train_world import train_toyworld

    config = config_from(ToyWorldTrainConfig, args=args)
    manifest = train_toyworld(config, command=reproducing_command(config))
    sys.stdout.write(f"{manifest}\n")


@needs_extra("train")
def _judge(args: argparse.Namespace) -> None:
    from musicrl.toyworld.judge import judge

    judgement = judge(config_from(JudgeConfig, args=args))
    sys.stdout.write(judgement.table() + "\n")
    if args.out:
        args.out.write_text(json.dumps(judgement.as_dict(), indent=2) + "\n")
