"""``musicrl bus provision`` against a real nats-server: what the chart's hook Job runs before the services start."""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from musicrl.bus import provision
from musicrl.bus.connection import BUCKETS
from musicrl.bus.local_server import LocalNatsServer
from musicrl.cli import main


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    with LocalNatsServer(tmp_path / "jetstream", log_path=tmp_path / "nats.log") as server:
        yield server


async def _inventory(url: str) -> tuple[dict[str, list[str]], dict[str, int]]:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        infos = await js.streams_info()
        # KV buckets are streams named KV_<bucket>; the histories below check those
        streams = {i.config.name: list(i.config.subjects or []) for i in infos if not i.config.name.startswith("KV_")}
        histories = {spec.name: (await (await js.key_value(spec.name)).status()).history for spec in BUCKETS}
    finally:
        await client.drain()
    return streams, histories


def _provision(*argv: str) -> None:
    main(["bus", "provision", *argv])  # returns on success; a platform error exits with its code


def test_provision_creates_streams_and_buckets_and_is_idempotent(nats_server: LocalNatsServer) -> None:
    _provision("--nats-url", nats_server.url)
    _provision("--nats-url", nats_server.url)  # every helm upgrade runs the hook again: nothing changes, no error
    streams, histories = asyncio.run(_inventory(nats_server.url))
    assert streams == {"MUSICRL": ["musicrl.v1.>"], "MUSICRL_DLQ": ["musicrl.dlq.>"]}
    assert histories == {spec.name: spec.history for spec in BUCKETS}


def test_provision_takes_stream_names_from_flags(nats_server: LocalNatsServer) -> None:
    _provision("--nats-url", nats_server.url, "--stream-name", "EVENTS", "--dlq-stream-name", "DEAD")
    streams, _ = asyncio.run(_inventory(nats_server.url))
    assert set(streams) == {"EVENTS", "DEAD"}


def test_provision_refuses_replicas_a_single_server_cannot_hold(nats_server: LocalNatsServer) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bus", "provision", "--nats-url", nats_server.url, "--replicas", "3"])
    assert exited.value.code == 2  # InvalidRequest: a setting the operator can fix


def test_module_entry_point_reads_env(nats_server: LocalNatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m musicrl.bus.provision` reads the MUSICRL_* variables of the chart's ConfigMap, as the CLI does
    monkeypatch.setenv("MUSICRL_NATS_URL", nats_server.url)
    monkeypatch.setenv("MUSICRL_STREAM_NAME", "FROM_ENV")
    provision.main([])
    streams, _ = asyncio.run(_inventory(nats_server.url))
    assert set(streams) == {"FROM_ENV", "MUSICRL_DLQ"}
