"""Reading every key under a prefix of a KV bucket, against a real nats-server."""

import asyncio
from pathlib import Path

import nats

from musicrl.bus.kv_snapshot import read_prefix
from musicrl.bus.local_server import LocalNatsServer


async def _scenario(url: str) -> list[dict[str, bytes]]:
    client = await nats.connect(url)
    try:
        kv = await client.jetstream().create_key_value(bucket="rollout", history=4)
        await asyncio.gather(*(kv.put(f"r.one.vote.c{i}.l{i % 7}", str(i).encode()) for i in range(300)))
        await kv.put("r.one.cmp.c0", b"first")
        await kv.put("r.one.cmp.c0", b"second")  # only the latest revision is read
        await kv.put("r.one.cmp.gone", b"x")
        await kv.delete("r.one.cmp.gone")
        await kv.put("r.onex.vote.c1.l1", b"a neighbouring rollout")  # shares the text, not the prefix
        await kv.put("r.one", b"the prefix itself is not under it")
        # many readers at once, while the loop is busy with each other's replies
        return list(await asyncio.gather(*(read_prefix(kv, "r.one") for _ in range(8)), read_prefix(kv, "r.none")))
    finally:
        await client.drain()


def test_read_prefix_returns_every_live_key_under_the_prefix_and_nothing_else(tmp_path: Path) -> None:
    with LocalNatsServer(tmp_path / "jetstream") as server:
        *reads, empty = asyncio.run(_scenario(server.url))
    expected = {f"vote.c{i}.l{i % 7}": str(i).encode() for i in range(300)} | {"cmp.c0": b"second"}
    assert all(read == expected for read in reads)
    assert empty == {}
