"""The votes of one rollout, counted exactly once across restarts.

Everything the count depends on lives in the ``rollout`` KV bucket under ``r.<rollout id>.``:

- ``cmp.<comparison>``: a stable-vs-canary comparison that counts, with the canary's slot and both clips'
  lengths (written when its ComparisonServed event arrives);
- ``heard.<comparison>.<listener>``: which of its clips that listener has played long enough;
- ``vote.<comparison>.<listener>``: a counted vote, created with a create-if-absent, so a re-delivered or
  repeated preference of the same listener on the same comparison never counts twice.

Each event is acknowledged only after its writes (see :meth:`Tally.flush`), and every write is idempotent (a
re-delivered playback sets the same flag, a re-delivered vote finds its key), so a controller killed at any
point and restarted counts what an uninterrupted one counts. In memory the tally is a cache of those keys,
rebuilt at start.
"""

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from musicrl.bus.kv_snapshot import read_prefix
from musicrl.rollout.decision import Evidence


OUTCOMES = ("canary", "stable", "tie", "none")


def listener_key(user_id: str) -> str:
    """A KV-safe token for a pseudonymous listener id (which may hold characters keys cannot)."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class CanaryComparison:
    """A stable-vs-canary comparison that counts.

    Attributes:
        canary_slot: ``a`` or ``b``.
        clip_ids: Clip of slot A, clip of slot B.
        min_listened_ms: Per slot, how much must be played for a vote on it to count.
    """

    canary_slot: str
    clip_ids: tuple[str, str]
    min_listened_ms: tuple[int, int]

    def slot_of(self, clip_id: str) -> int | None:
        return self.clip_ids.index(clip_id) if clip_id in self.clip_ids else None

    def outcome(self, choice: str) -> str:
        """``canary``, ``stable``, ``tie`` or ``none`` for a choice of slot ``a``/``b``, ``tie`` or ``none``."""
        if choice in ("a", "b"):
            return "canary" if choice == self.canary_slot else "stable"
        return choice


@dataclass
class Tally:
    """One rollout's votes and what they depend on, backed by the bucket.

    Args:
        kv: The ``rollout`` bucket.
        rollout_id: The rollout.
        max_votes_per_listener: Votes one listener may cast in this rollout; later ones do not count.
    """

    kv: KeyValue
    rollout_id: str
    max_votes_per_listener: int
    comparisons: dict[str, CanaryComparison] = field(default_factory=dict)
    heard: dict[tuple[str, str], tuple[bool, bool]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    per_listener: Counter[str] = field(default_factory=Counter)
    voted: set[tuple[str, str]] = field(default_factory=set)
    ignored: Counter[str] = field(default_factory=Counter)  # since this process started: a diagnostic only
    _writes: list[Awaitable[object]] = field(default_factory=list)

    async def flush(self) -> None:
        """Store the comparison and playback changes made since the last flush (before their events are acked).

        They are written together, in no particular order: each is idempotent and monotone, so a crash halfway
        leaves nothing that the replay from the ack floor does not write again. Votes are not deferred: a vote
        key is created before the vote counts, in stream order, which keeps the per-listener cap the same in
        an interrupted run.
        """
        writes, self._writes = self._writes, []
        await asyncio.gather(*writes)

    @property
    def prefix(self) -> str:
        return f"r.{self.rollout_id}"

    async def load(self) -> None:
        """Rebuild the cache from the bucket (a fresh controller, or ``musicrl rollout analyse``).

        Votes are absorbed in key order, not stream order; the counts do not depend on it.
        """
        for key, value in (await read_prefix(self.kv, self.prefix)).items():
            self._absorb(key.split("."), value)

    def _absorb(self, parts: list[str], value: bytes) -> None:
        kind, comparison_id, *rest = parts
        data = json.loads(value)
        if kind == "cmp":
            self.comparisons[comparison_id] = CanaryComparison(
                data["canary_slot"],
                tuple(data["clip_ids"]),
                tuple(data["min_listened_ms"]),  # type: ignore[arg-type]
            )
        elif kind == "heard":
            self.heard[(comparison_id, rest[0])] = (bool(data[0]), bool(data[1]))
        elif kind == "vote":
            self._count(comparison_id, rest[0], str(data["outcome"]))

    def _count(self, comparison_id: str, listener: str, outcome: str) -> None:
        self.voted.add((comparison_id, listener))
        self.outcomes[outcome] += 1
        self.per_listener[listener] += 1

    def evidence(self, **rest: object) -> Evidence:
        """The counts as decision evidence; ``rest`` fills the remaining fields (time, guardrails)."""
        o = self.outcomes
        return Evidence(canary_wins=o["canary"], stable_wins=o["stable"], ties=o["tie"], nones=o["none"], **rest)  # type: ignore[arg-type]

    async def add_comparison(self, comparison_id: str, comparison: CanaryComparison) -> None:
        if comparison_id in self.comparisons:
            return
        value = {
            "canary_slot": comparison.canary_slot,
            "clip_ids": list(comparison.clip_ids),
            "min_listened_ms": list(comparison.min_listened_ms),
        }
        self.comparisons[comparison_id] = comparison
        self._writes.append(self.kv.put(f"{self.prefix}.cmp.{comparison_id}", json.dumps(value).encode()))

    async def add_playback(
        self, comparison_id: str, user_id: str, clip_id: str, listened_ms: int, completed: bool
    ) -> None:
        """Mark the clip heard by the listener when enough of it was played (a flag that is never cleared)."""
        comparison = self.comparisons.get(comparison_id)
        slot = comparison.slot_of(clip_id) if comparison else None
        if comparison is None or slot is None:
            return
        if not (completed or listened_ms >= comparison.min_listened_ms[slot]):
            return
        listener = listener_key(user_id)
        before = self.heard.get((comparison_id, listener), (False, False))
        after = (before[0] or slot == 0, before[1] or slot == 1)
        if after != before:
            self.heard[(comparison_id, listener)] = after
            self._writes.append(
                self.kv.put(f"{self.prefix}.heard.{comparison_id}.{listener}", json.dumps(after).encode())
            )

    async def add_preference(self, comparison_id: str, user_id: str, choice: str) -> str | None:
        """Count a vote; returns its outcome, or None when it does not count (and why goes to ``ignored``)."""
        comparison = self.comparisons.get(comparison_id)
        if comparison is None:
            return None  # not a stable-vs-canary comparison of this rollout
        listener = listener_key(user_id)
        if (comparison_id, listener) in self.voted:
            self.ignored["repeated"] += 1
            return None
        if self.heard.get((comparison_id, listener)) != (True, True):
            self.ignored["not listened to both clips"] += 1
            return None
        if self.per_listener[listener] >= self.max_votes_per_listener:
            self.ignored["over the listener's cap"] += 1
            return None
        outcome = comparison.outcome(choice)
        key = f"{self.prefix}.vote.{comparison_id}.{listener}"
        try:
            await self.kv.create(key, json.dumps({"outcome": outcome}).encode())
        except KeyWrongLastSequenceError:  # stored by a run whose ack was lost, after this cache was built: it counts
            stored = await self.kv.get(key)
            outcome = str(json.loads(stored.value or b"{}").get("outcome", outcome))
        self._count(comparison_id, listener, outcome)
        return outcome
