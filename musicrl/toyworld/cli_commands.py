"""``musicrl toyworld train``: rebuild the shipped toy models from seeds.

musicrl toyworld train [--seed 0] [--out-dir DIR] [--quick true] [--threads 2]
musicrl toyworld judge --policy-uri URI [--baseline-uri toy://musicgen] [--prompts 96] [--out FILE]
musicrl toyworld sweep [--policy-uri toy://musicgen] [--prompts 48] [--out FILE]
musicrl toyworld adherence [--policy-uri toy://musicgen] [--prompts 120] [--temperature 1] [--out FILE]
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
from musicrl.toyworld.judge_config import AdherenceConfig, JudgeConfig, SweepConfig
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
    sweep = actions.add_parser(
        "sweep", help="how temperature and guidance change a toy policy's audio: spectral entropy, flux, adherence"
    )
    add_config_flags(sweep, SweepConfig)
    sweep.add_argument("--out", type=Path, help="also write the sweep as JSON to this file")
    sweep.set_defaults(command=_sweep)
    adherence = actions.add_parser(
        "adherence", help="how often a toy policy plays what held-out captions ask, and what it plays instead"
    )
    add_config_flags(adherence, AdherenceConfig)
    adherence.add_argument("--out", type=Path, help="also write the agreement and confusion as JSON to this file")
    adherence.set_defaults(command=_adherence)


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


SWEEP_TEMPERATURES = (0.5, 1.0, 1.5)
SWEEP_GUIDANCE_SCALES = (1.0, 3.0, 5.0)


@needs_extra("train")
def _sweep(args: argparse.Namespace) -> None:
    from musicrl.models.engine import GenerationEngine
    from musicrl.toyworld.evaluate import held_out_prompts, sampling_sweep

    config = config_from(SweepConfig, args=args)
    prompts = [e.caption.text for e in held_out_prompts(config.seed, config.prompts)]
    engine = GenerationEngine.from_uri(config.policy_uri)
    sweep = sampling_sweep(engine, prompts, SWEEP_TEMPERATURES, SWEEP_GUIDANCE_SCALES, seed=config.seed)
    lines = [f"{'temperature':>11} {'entropy (bits)':>14} {'flux':>7}"]
    for row in sweep["temperature"]:
        lines.append(f"{row['temperature']:11.2f} {row['spectral_entropy']:14.3f} {row['spectral_flux']:7.3f}")
    lines += ["", f"{'guidance':>11} {'adherence':>10}  per attribute"]
    for row in sweep["guidance"]:
        attributes = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("guidance_scale", "adherence"))
        lines.append(f"{row['guidance_scale']:11.1f} {row['adherence']:10.3f}  {attributes}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        args.out.write_text(json.dumps(sweep, indent=2) + "\n")


@needs_extra("train")
def _adherence(args: argparse.Namespace) -> None:
    from musicrl.models.engine import GenerationEngine
    from musicrl.toyworld.evaluate import held_out_prompts, prompt_adherence

    config = config_from(AdherenceConfig, args=args)
    prompts = [e.caption.text for e in held_out_prompts(config.seed, config.prompts)]
    engine = GenerationEngine.from_uri(config.policy_uri)
    adherence = prompt_adherence(engine, prompts, config.sampling(), seed=config.seed)
    sys.stdout.write(adherence.table() + "\n")
    if args.out:
        args.out.write_text(json.dumps(adherence.as_dict(), indent=2) + "\n")
