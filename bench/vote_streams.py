"""Listeners voting on stable-vs-canary comparisons, as the rollout benchmark feeds them to the controller.

An audience with a real one's faults: stable-vs-stable comparisons, votes without listening, second clicks, ties
and "neither"; with the votes a correct tally counts from them.
"""

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import Message

from musicrl.bus.events import new_header
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.v1 import events_pb2


CLIP_S = 4.0


@dataclass
class VoteStream:
    """Events in publishing order, and the votes a correct tally counts from them (by outcome)."""

    events: list[Message] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)


def clip(clip_id: str, policy: PolicyEndpoint) -> events_pb2.ClipRef:
    ref = events_pb2.PolicyRef(model_uri=policy.model_uri, version=policy.version)
    return events_pb2.ClipRef(clip_id=clip_id, policy=ref, duration_s=CLIP_S)


def comparison_events(
    stable: PolicyEndpoint, canary: PolicyEndpoint, canary_slot: str, user: str, rng: random.Random, *, heard: bool
) -> tuple[str, list[Message]]:
    """A comparison served (canary in ``canary_slot``, or none for ""), and the listener's two playbacks."""
    comparison_id = str(uuid.UUID(int=rng.getrandbits(128)))
    clips = (uuid.UUID(int=rng.getrandbits(128)).hex, uuid.UUID(int=rng.getrandbits(128)).hex)
    slot = {"a": events_pb2.CANARY_SLOT_A, "b": events_pb2.CANARY_SLOT_B, "": events_pb2.CANARY_SLOT_NONE}
    events: list[Message] = [
        events_pb2.ComparisonServed(
            header=new_header(),
            comparison_id=comparison_id,
            prompt="bench prompt",
            clip_a=clip(clips[0], canary if canary_slot == "a" else stable),
            clip_b=clip(clips[1], canary if canary_slot == "b" else stable),
            display_order=events_pb2.DISPLAY_ORDER_A_FIRST,
            user_id=user,
            canary_slot=slot[canary_slot],
        )
    ]
    for index, clip_id in enumerate(clips):
        listened = int(CLIP_S * 1000) if heard or index == 0 else int(CLIP_S * 300)
        events.append(
            events_pb2.Playback(
                header=new_header(), comparison_id=comparison_id, clip_id=clip_id, listened_ms=listened, user_id=user
            )
        )
    return comparison_id, events


def vote_stream(stable: PolicyEndpoint, canary: PolicyEndpoint, events: int, win_rate: float, seed: int) -> VoteStream:
    """About ``events`` events of an audience with a real one's faults: stable-vs-stable comparisons, votes
    without listening, second clicks, ties and "neither". Counted: the first vote of a listener who heard both
    clips of a stable-vs-canary comparison (no listener cap applies: the bench sets it out of reach)."""
    rng = random.Random(seed)
    stream = VoteStream()
    while len(stream.events) < events:
        user = f"listener-{rng.randrange(64)}"
        canary_slot = rng.choice("ab") if rng.random() < 0.9 else ""
        heard = rng.random() < 0.9
        comparison_id, served = comparison_events(stable, canary, canary_slot, user, rng, heard=heard)
        stream.events.extend(served)
        roll = rng.random()
        if roll < 0.1:
            outcome, chosen = "tie", "tie"
        elif roll < 0.15:
            outcome, chosen = "none", "none"
        else:
            outcome = "canary" if rng.random() < win_rate else "stable"
            chosen = canary_slot if outcome == "canary" else {"a": "b", "b": "a"}.get(canary_slot, "a")
        choice = {"a": events_pb2.CHOICE_A, "b": events_pb2.CHOICE_B, "tie": events_pb2.CHOICE_TIE}
        first = choice.get(chosen, events_pb2.CHOICE_NONE)
        choices = [first] + ([events_pb2.CHOICE_A] if rng.random() < 0.1 else [])  # a second click never counts
        for c in choices:
            stream.events.append(
                events_pb2.PreferenceSubmitted(
                    header=new_header(), comparison_id=comparison_id, choice=c, user_id=user
                )
            )
        if canary_slot and heard:
            stream.expected[outcome] += 1
    return stream
