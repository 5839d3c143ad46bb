"""``musicrl bus provision``: create or update the streams and KV buckets, once, before the services start.

The chart's install/upgrade hook Job runs it, so a cluster is provisioned by the same code the services call at
start-up (:func:`musicrl.bus.connection.ensure_streams` and :func:`~musicrl.bus.connection.ensure_buckets`).
The Job runs ``musicrl bus provision`` in the recorder's image: the CLI's parser needs only the base dependencies.
``python -m musicrl.bus.provision`` takes the same flags and variables and imports only the bus.
"""

import argparse
import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors

from musicrl.bus.connection import BUCKETS, connect, ensure_buckets, ensure_streams
from musicrl.config import BusConfig
from musicrl.entrypoint import run_main
from musicrl.errors import InvalidRequest
from musicrl.settings import add_config_flags, config_from


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProvisionReport:
    """What exists after provisioning.

    Attributes:
        streams: Names of the event and dead-letter streams.
        buckets: Names of the KV buckets.
    """

    streams: tuple[str, ...]
    buckets: tuple[str, ...]


async def provision(config: BusConfig) -> ProvisionReport:
    """Create the event and dead-letter streams and every KV bucket, or bring their settings up to ``config``.

    Idempotent: running it again (every ``helm upgrade``) changes nothing that is already right.

    Args:
        config: The NATS server and the stream settings (replicas, retention).

    Returns:
        The names of what now exists.

    Raises:
        InvalidRequest: The server refused a stream or bucket, for example 3 replicas on a single server.
    """
    client, js = await connect(config, name="musicrl-provision")
    try:
        await ensure_streams(js, config)
        await ensure_buckets(js, config)
    except nats.js.errors.APIError as e:
        raise InvalidRequest(
            f"NATS at {config.nats_url} refused the streams or buckets ({e.description}); with replicas "
            f"{config.replicas} the JetStream cluster needs at least that many servers"
        ) from e
    finally:
        await client.drain()
    report = ProvisionReport(
        streams=(config.stream_name, config.dlq_stream_name), buckets=tuple(spec.name for spec in BUCKETS)
    )
    logger.info("provisioned streams %s and buckets %s at %s", report.streams, report.buckets, config.nats_url)
    return report


def run_provision(config: BusConfig) -> ProvisionReport:
    """:func:`provision` from synchronous code (the CLI)."""
    return asyncio.run(provision(config))


def main(argv: Sequence[str] | None = None) -> None:
    """Provision from flags (``--nats-url``, ``--replicas``, ...) and ``MUSICRL_*`` variables, as the CLI does."""
    parser = argparse.ArgumentParser(prog="python -m musicrl.bus.provision", description=__doc__.split("\n")[0])
    add_config_flags(parser, BusConfig)
    args = parser.parse_args(argv)

    def provision_from_args() -> None:
        run_provision(config_from(BusConfig, args=args))

    run_main(provision_from_args)


if __name__ == "__main__":
    main()
