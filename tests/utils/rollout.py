"""Rollout test helpers: the controller as a real subprocess, and a stream of stable-vs-canary votes whose
correct count is known (computed here by a plain reference, independently of the controller's tally)."""

import os
import random
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

from musicrl.bus.events import new_header
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.v1 import events_pb2
from tests.utils.processes import RestartableService


CLIP_S = 4.0


class ControllerProcess(RestartableService):
    """``python -m services.rollout`` against ``nats_url``; start, kill and stop it.

    Args:
        nats_url: The NATS server.
        state_dir: The local target's state folder (and where the logs go).
        settings: Extra ``MUSICRL_*`` settings, by variable name.
    """

    def __init__(self, nats_url: str, state_dir: Path, **settings: str) -> None:
        env = {
            **os.environ,
            "MUSICRL_NATS_URL": nats_url,
            "MUSICRL_STATE_DIR": str(state_dir),
            "MUSICRL_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
        super().__init__("services.rollout", "controller", env, state_dir)

    def stop(self) -> None:
        """SIGTERM if it runs (SIGKILL if it hangs)."""
        if self.running():
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                pass


@dataclass
class VoteStream:
    """Events of listeners judging stable-vs-canary comparisons, and what a correct tally makes of them.

    Attributes:
        events: In publishing order.
        expected: Counted outcomes (``canary``, ``stable``, ``tie``, ``none``) by the reference rules.
        ignored: Preferences that must not count, by why.
    """

    events: list[Message] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)


def _ref(clip_id: str, policy: PolicyEndpoint) -> events_pb2.ClipRef:
    return events_pb2.ClipRef(
        clip_id=clip_id,
        policy=events_pb2.PolicyRef(model_uri=policy.model_uri, version=policy.version),
        duration_s=CLIP_S,
    )


def vote_stream(
    stable: PolicyEndpoint,
    canary: PolicyEndpoint,
    comparisons: int,
    canary_win_rate: float,
    *,
    listeners: int = 8,
    cap: int = 1000,
    seed: int = 0,
) -> VoteStream:
    """Listeners who prefer the canary's clip with ``canary_win_rate`` (among a/b answers), with the faults a
    real audience has: stable-vs-stable comparisons, votes without listening, repeated votes, ties and
    "neither", and one keen listener who would vote past ``cap``."""
    rng = random.Random(seed)
    stream = VoteStream()
    per_listener: Counter[str] = Counter()
    for i in range(comparisons):
        comparison_id = str(uuid.UUID(int=rng.getrandbits(128)))
        user = "keen" if i % 3 == 0 else f"listener-{rng.randrange(listeners)}"
        with_canary = rng.random() < 0.9
        canary_slot = rng.choice("ab") if with_canary else ""
        clips = (uuid.UUID(int=rng.getrandbits(128)).hex, uuid.UUID(int=rng.getrandbits(128)).hex)
        policies = (
            canary if canary_slot == "a" else stable,
            canary if canary_slot == "b" else stable,
        )
        slot_enum = {"a": events_pb2.CANARY_SLOT_A, "b": events_pb2.CANARY_SLOT_B, "": events_pb2.CANARY_SLOT_NONE}
        stream.events.append(
            events_pb2.ComparisonServed(
                header=new_header(),
                comparison_id=comparison_id,
                prompt=f"prompt {i}",
                clip_a=_ref(clips[0], policies[0]),
                clip_b=_ref(clips[1], policies[1]),
                display_order=rng.choice([events_pb2.DISPLAY_ORDER_A_FIRST, events_pb2.DISPLAY_ORDER_B_FIRST]),
                user_id=user,
                canary_slot=slot_enum[canary_slot],
            )
        )
        heard_both = rng.random() < 0.9
        for slot, clip in enumerate(clips):
            listened = int(CLIP_S * 1000) if heard_both or slot == 0 else int(CLIP_S * 1000 * 0.3)
            stream.events.append(
                events_pb2.Playback(
                    header=new_header(), comparison_id=comparison_id, clip_id=clip, listened_ms=listened, user_id=user
                )
            )
        roll = rng.random()
        if roll < 0.1:
            outcome, choice = "tie", events_pb2.CHOICE_TIE
        elif roll < 0.15:
            outcome, choice = "none", events_pb2.CHOICE_NONE
        else:
            outcome = "canary" if rng.random() < canary_win_rate else "stable"
            chosen = canary_slot if outcome == "canary" else {"a": "b", "b": "a"}.get(canary_slot, "a")
            choice = events_pb2.CHOICE_A if chosen == "a" else events_pb2.CHOICE_B
        votes = 2 if rng.random() < 0.1 else 1  # a listener who answers twice (a second click, another key)
        for repeat in range(votes):
            if repeat:
                choice = events_pb2.CHOICE_A if choice == events_pb2.CHOICE_B else events_pb2.CHOICE_B
            stream.events.append(
                events_pb2.PreferenceSubmitted(
                    header=new_header(), comparison_id=comparison_id, choice=choice, user_id=user
                )
            )
            if not with_canary:
                continue
            if repeat:
                stream.ignored["repeated"] += 1
            elif not heard_both:
                stream.ignored["not listened to both clips"] += 1
            elif per_listener[user] >= cap:
                stream.ignored["over the listener's cap"] += 1
            else:
                per_listener[user] += 1
                stream.expected[outcome] += 1
    return stream
