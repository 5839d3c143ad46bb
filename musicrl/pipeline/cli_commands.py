"""The ``musicrl policy`` and ``musicrl pipeline`` sub-commands: their parsers and their handlers.

    musicrl policy list --registry-url URL                 # a table of every version, oldest first
    musicrl policy show VERSION --registry-url URL         # one version (v3, 3 or latest) as JSON
    musicrl policy register MODEL_URI --registry-url URL   # a checkpoint as the next version, by hand
    musicrl pipeline compile [--pipeline MODULE:FUNCTION] [--output pipelines/retraining.yaml]
    musicrl pipeline upload [--package FILE] [--pipeline-name NAME] [--pipeline-version NAME]
    musicrl pipeline run [--package FILE] [--experiment NAME] [--run-name NAME] [--param KEY=VALUE ...]
    musicrl pipeline schedule --cron '0 0 3 * * *' [--schedule-name NAME] [--param KEY=VALUE ...]

The Kubeflow Pipelines commands connect with ``KFP_HOST``, ``KFP_NAMESPACE`` and ``KFP_TOKEN`` (or
``--host``, ``--namespace``, ``--token``). Each prints its result on stdout (a path, or JSON), so a script
can capture it; logs go to stderr.
"""

import argparse
import json
import sys
from typing import Any

from musicrl.extras import needs_extra
from musicrl.pipeline.kfp_config import (
    KFP_ENV_PREFIX,
    PIPELINE_ENV_PREFIX,
    CompileConfig,
    KfpConfig,
    RunConfig,
    ScheduleConfig,
    UploadConfig,
)
from musicrl.pipeline.registry_config import RegistryConfig
from musicrl.settings import add_config_flags, config_from


Commands = Any  # argparse's sub-parsers action, whose class is private


def add_policy_commands(commands: Commands) -> None:
    """Add ``policy list`` and ``policy show`` to the top-level sub-parsers ``commands``."""
    policy = commands.add_parser("policy", help="the policy registry: versions of the policy that passed the gate")
    actions = policy.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every registered version, oldest first, as a table")
    add_config_flags(listing, RegistryConfig)
    listing.set_defaults(command=_policy_list)
    show = actions.add_parser("show", help="one registered version as JSON")
    show.add_argument("version", help="the version: v3 (or 3), or latest")
    add_config_flags(show, RegistryConfig)
    show.set_defaults(command=_policy_show)
    register = actions.add_parser("register", help="record a checkpoint as the next version (by hand, ungated)")
    register.add_argument("model_uri", help="the checkpoint (a folder, s3://..., hf://..., tiny://...)")
    register.add_argument("--parent-uri", default=None, help="the policy it was finetuned from")
    add_config_flags(register, RegistryConfig)
    register.set_defaults(command=_policy_register)


def add_pipeline_commands(commands: Commands) -> None:
    """Add ``pipeline compile|upload|run|schedule`` to the top-level sub-parsers ``commands``."""
    pipeline = commands.add_parser("pipeline", help="the Kubeflow retraining pipeline: compile, upload, run, schedule")
    actions = pipeline.add_subparsers(required=True, metavar="ACTION")
    compiling = actions.add_parser("compile", help="compile the pipeline function to its YAML package")
    add_config_flags(compiling, CompileConfig)
    compiling.set_defaults(command=_pipeline_compile)
    for name, config, handler, help_text in (
        ("upload", UploadConfig, _pipeline_upload, "upload the package as a pipeline version (once per content)"),
        ("run", RunConfig, _pipeline_run, "start one run of the package"),
        ("schedule", ScheduleConfig, _pipeline_schedule, "make the package the one recurring run of its name"),
    ):
        parser = actions.add_parser(name, help=help_text)
        add_config_flags(parser, KfpConfig)
        add_config_flags(parser, config)
        if name != "upload":
            parser.add_argument(
                "--param",
                action="append",
                metavar="KEY=VALUE",
                help="a pipeline parameter (repeatable); JSON values are parsed: rl_workers=4, stages=R,U",
            )
        parser.set_defaults(command=handler)


@needs_extra("pipeline")
def _policy_list(args: argparse.Namespace) -> None:
    from musicrl.pipeline.registry import PolicyRegistry, version_table

    registry = PolicyRegistry(config_from(RegistryConfig, args=args).registry_url)
    sys.stdout.write(version_table(registry.list()))


@needs_extra("pipeline")
def _policy_show(args: argparse.Namespace) -> None:
    from musicrl.errors import NotFound
    from musicrl.pipeline.registry import PolicyRegistry

    url = config_from(RegistryConfig, args=args).registry_url
    registry = PolicyRegistry(url)
    version = registry.latest() if args.version == "latest" else registry.get(args.version)
    if version is None:
        raise NotFound(f"the registry at {url} holds no policy versions yet")
    sys.stdout.write(json.dumps(version.to_wire(), indent=2) + "\n")


@needs_extra("pipeline")
def _policy_register(args: argparse.Namespace) -> None:
    from musicrl.pipeline.registry import PolicyRegistry
    from musicrl.rollout.levers import check_checkpoint

    check_checkpoint(args.model_uri)
    registry = PolicyRegistry(config_from(RegistryConfig, args=args).registry_url)
    version = registry.register(args.model_uri, parent_uri=args.parent_uri)
    sys.stdout.write(json.dumps(version.to_wire(), indent=2) + "\n")


def _kfp(args: argparse.Namespace) -> tuple[Any, KfpConfig]:
    from musicrl.pipeline.kfp_client import connect

    config = config_from(KfpConfig, args=args, env_prefix=KFP_ENV_PREFIX)
    return connect(config), config


@needs_extra("pipeline")
def _pipeline_compile(args: argparse.Namespace) -> None:
    from musicrl.pipeline.kfp_client import compile_pipeline

    config = config_from(CompileConfig, args=args, env_prefix=PIPELINE_ENV_PREFIX)
    sys.stdout.write(compile_pipeline(config.pipeline, config.output) + "\n")


@needs_extra("pipeline")
def _pipeline_upload(args: argparse.Namespace) -> None:
    from musicrl.pipeline.kfp_client import upload_pipeline

    upload = config_from(UploadConfig, args=args, env_prefix=PIPELINE_ENV_PREFIX)
    client, kfp_config = _kfp(args)
    version = upload_pipeline(client, upload, host=kfp_config.host)
    _write_json(
        {
            "pipeline_id": version.pipeline_id,
            "version_id": version.version_id,
            "version_name": version.version_name,
            "created": version.created,
        }
    )


@needs_extra("pipeline")
def _pipeline_run(args: argparse.Namespace) -> None:
    from musicrl.pipeline.kfp_client import parse_params, run_pipeline

    run = config_from(RunConfig, args=args, env_prefix=PIPELINE_ENV_PREFIX)
    params = parse_params(args.param)
    client, kfp_config = _kfp(args)
    run_id = run_pipeline(client, run, params, namespace=kfp_config.namespace, host=kfp_config.host)
    _write_json({"run_id": run_id, "experiment": run.experiment})


@needs_extra("pipeline")
def _pipeline_schedule(args: argparse.Namespace) -> None:
    from musicrl.pipeline.kfp_client import parse_params, schedule_pipeline

    schedule = config_from(ScheduleConfig, args=args, env_prefix=PIPELINE_ENV_PREFIX)
    params = parse_params(args.param)
    client, kfp_config = _kfp(args)
    outcome = schedule_pipeline(client, schedule, params, namespace=kfp_config.namespace, host=kfp_config.host)
    _write_json(
        {
            "recurring_run_id": outcome.recurring_run_id,
            "replaced": list(outcome.replaced),
            "pipeline_id": outcome.version.pipeline_id,
            "version_id": outcome.version.version_id,
            "cron": schedule.cron,
        }
    )


def _write_json(data: dict[str, Any]) -> None:
    # stdout, not the log: the ids are the command's output (OUT=$(musicrl pipeline schedule ...) in a script)
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
