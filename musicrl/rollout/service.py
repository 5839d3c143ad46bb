"""Run the rollout controller: connect, build the target and the probe, judge until SIGTERM."""

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from musicrl.bus.connection import connect, ensure_buckets, ensure_streams
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.controller import RolloutController
from musicrl.rollout.guardrails import GuardrailProbe
from musicrl.rollout.target import RolloutTarget


logger = logging.getLogger(__name__)


def build_target(config: ControllerConfig) -> RolloutTarget:
    """The ``local`` or ``kserve`` target named by the config."""
    if config.target == "kserve":
        from musicrl.rollout.kserve_target import KServeTarget

        return KServeTarget(config.kserve_target())
    from musicrl.rollout.local_target import LocalTarget

    return LocalTarget(config.local, config.generator_model_name, config.bus.nats_url)


async def control(config: ControllerConfig, stop: asyncio.Event) -> None:
    """Judge rollouts until ``stop`` is set."""
    client, js = await connect(config.bus, name="rollout")
    try:
        await ensure_streams(js, config.bus)
        buckets = await ensure_buckets(js, config.bus)
        target = build_target(config)
        controller = RolloutController(config, js, buckets, target, GuardrailProbe(config, target))
        logger.info("rollout controller on %s, target %s", config.bus.nats_url, config.target)
        try:
            await controller.run(stop)
        finally:
            close = getattr(target, "close", None)  # the kserve target's connection pool
            if close is not None:
                close()
    finally:
        await client.drain()


def run_controller(config: ControllerConfig) -> None:
    """Serve metrics, judge until SIGTERM or SIGINT, and return (the process then exits 0)."""
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await control(config, stop)

    asyncio.run(main())
