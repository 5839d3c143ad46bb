"""Every key under a prefix of a KV bucket, read completely.

A watch is the obvious way to read a prefix, and it is not safe for that: nats-py marks "the end of the
initial values" with a ``None`` that it may queue *before* those values when the server has already pushed
them and the client has not yet run its callback (it compares the consumer's pending count, which is then 0,
with what the callback has seen, also 0). Under load a reader that stops at the marker finds nothing. Its
``keys()`` shares the watch. So the stream is asked which subjects exist under the prefix, and each is read.
"""

import asyncio

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue


CONCURRENT_GETS = 64  # requests in flight at once; enough to hide the round trip on loopback and in a cluster


async def read_prefix(kv: KeyValue, prefix: str) -> dict[str, bytes]:
    """The latest value of every live key that starts with ``prefix + "."``.

    Args:
        kv: The bucket.
        prefix: A key prefix without its trailing dot, for example ``r.<rollout id>``.

    Returns:
        Key (without the prefix and its dot) to value; deleted and purged keys are left out.
    """
    # nats-py gives KeyValue no public handle on its stream; these are the names it was built with
    js, stream, subject_prefix = kv._js, kv._stream, kv._pre  # noqa: SLF001
    info = await js.stream_info(stream, subjects_filter=f"{subject_prefix}{prefix}.>")
    subjects = sorted((info.state.subjects or {}).keys())
    limit = asyncio.Semaphore(CONCURRENT_GETS)

    async def get(key: str) -> tuple[str, bytes] | None:
        async with limit:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # deleted or purged after the listing
                return None
        return key, entry.value or b""

    keys = [subject[len(subject_prefix) :] for subject in subjects]
    found = await asyncio.gather(*(get(key) for key in keys))
    return {key[len(prefix) + 1 :]: value for key, value in filter(None, found)}
