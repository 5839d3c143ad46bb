"""``musicrl triton export`` and ``musicrl serve triton``: the models as a Triton repository, served locally.

musicrl triton export --out DIR [--model URI] [--text-adherence-uri URI] [--quality-uri URI] [--preference-uri URI]
musicrl serve triton --repository DIR [--http-port 8000] [--grpc-port 8001]
"""

import argparse
import logging
from typing import Any

from musicrl.extras import needs_extra
from musicrl.settings import add_config_flags, config_from
from musicrl.triton.config import TritonExportConfig, TritonServeConfig


logger = logging.getLogger(__name__)

Commands = Any  # argparse's sub-parsers action, whose class is private


def add_triton_commands(commands: Commands) -> None:
    """Add ``triton export`` to the ``musicrl`` parser."""
    triton = commands.add_parser("triton", help="the models as a Triton Inference Server model repository")
    actions = triton.add_subparsers(required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the generator and the rewards as a Triton model repository")
    add_config_flags(export, TritonExportConfig)
    export.set_defaults(command=_export)


def add_serve_triton(servers: Commands) -> None:
    """Add ``serve triton`` to the ``serve`` group."""
    serve = servers.add_parser("triton", help="tritonserver over an exported repository (the local install)")
    add_config_flags(serve, TritonServeConfig)
    serve.set_defaults(command=_serve)


@needs_extra("serving")  # the contract's metadata lives with the KServe servers
def _export(args: argparse.Namespace) -> None:
    from musicrl.triton.repository import export_repository

    config = config_from(TritonExportConfig, args=args)
    models = export_repository(config)
    logger.info("wrote %s to %s", ", ".join(models), config.out)


@needs_extra("serving")  # the models tritonserver runs import the engine and the rewards
def _serve(args: argparse.Namespace) -> None:
    from musicrl.triton.server import serve_triton

    serve_triton(config_from(TritonServeConfig, args=args))
