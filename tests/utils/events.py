"""Factories for protobuf events and for Parquet datasets built from them (no NATS needed)."""

import datetime
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from google.protobuf.message import Message

from musicrl.bus.events import new_header
from musicrl.bus.subjects import kind_of
from musicrl.data.dataset import parquet_bytes, part_url, write_durably
from musicrl.data.event_tables import RecordedEvent, to_table
from musicrl.v1 import events_pb2


T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def at(minutes: float) -> datetime.datetime:
    """``T0`` plus ``minutes``: event times that sort the way a test needs."""
    return T0 + datetime.timedelta(minutes=minutes)


def _header(event_id: str | None, minutes: float) -> events_pb2.EventHeader:
    return new_header(event_id=event_id or str(uuid.uuid4()), occurred_at=at(minutes))


def generation(clip_id: str, prompt: str, *, version: str = "v1", minutes: float = 0, **fields) -> Message:
    """A ``GenerationCompleted`` whose URIs derive from the clip id; ``fields`` override any field."""
    values: dict = {
        "clip_id": clip_id,
        "prompt": prompt,
        "policy": events_pb2.PolicyRef(model_uri=f"s3://musicrl/policies/{version}", version=version),
        "sampling": events_pb2.SamplingParams(duration_s=10.0, temperature=1.0, top_k=250, guidance_scale=3.0),
        "seed": 7,
        "duration_s": 10.0,
        "audio_uri": f"s3://musicrl/clips/{clip_id}.wav",
        "codes_uri": f"s3://musicrl/clips/{clip_id}.codes.npy",
        "latency_ms": 1500.0,
        "sample_rate": 32000,
    }
    values.update(fields)
    return events_pb2.GenerationCompleted(header=_header(None, minutes), **values)


def comparison(comparison_id: str, prompt: str, clip_a: str, clip_b: str, *, user: str = "u1", minutes: float = 1):
    """A ``ComparisonServed`` of two clips with policies v1 (A) and v2 (B), B played first."""
    return events_pb2.ComparisonServed(
        header=_header(None, minutes),
        comparison_id=comparison_id,
        prompt=prompt,
        clip_a=events_pb2.ClipRef(clip_id=clip_a, policy=events_pb2.PolicyRef(model_uri="s3://p/v1", version="v1")),
        clip_b=events_pb2.ClipRef(clip_id=clip_b, policy=events_pb2.PolicyRef(model_uri="s3://p/v2", version="v2")),
        display_order=events_pb2.DISPLAY_ORDER_B_FIRST,
        user_id=user,
    )


def playback(comparison_id: str, clip_id: str, listened_ms: int, *, user: str = "u1", completed: bool = False):
    """A ``Playback`` report."""
    return events_pb2.Playback(
        header=_header(None, 2),
        comparison_id=comparison_id,
        clip_id=clip_id,
        listened_ms=listened_ms,
        completed=completed,
        user_id=user,
    )


def preference(comparison_id: str, choice: int, *, user: str = "u1", minutes: float = 3, event_id: str | None = None):
    """A ``PreferenceSubmitted`` with ``choice`` one of ``events_pb2.CHOICE_*``."""
    return events_pb2.PreferenceSubmitted(
        header=_header(event_id, minutes), comparison_id=comparison_id, choice=choice, user_id=user
    )


def rating(clip_id: str, score: int, *, rater: str = "r1") -> Message:
    """A ``QualityRating``."""
    return events_pb2.QualityRating(header=_header(None, 4), clip_id=clip_id, rater_id=rater, score=score)


def rollout(percent: float) -> Message:
    """A ``PolicyRollout`` starting a canary."""
    return events_pb2.PolicyRollout(
        header=_header(None, 5),
        action=events_pb2.ROLLOUT_ACTION_CANARY_STARTED,
        stable_model_uri="s3://p/v1",
        canary_model_uri="s3://p/v2",
        canary_percent=percent,
        reason="manual",
    )


def pipeline_failed(run_name: str = "run-1") -> Message:
    """A ``PipelineRunFailed`` from the retraining pipeline's exit handler."""
    return events_pb2.PipelineRunFailed(
        header=_header(None, 6), run_name=run_name, state="FAILED", task_name="retraining", error_message="boom"
    )


def listened_pair(comparison_id: str, prompt: str, choice: int, *, user: str = "u1", minutes: float = 3) -> list:
    """Everything one fully listened preference needs, in this order: generations of clips A and B, the
    comparison, playbacks of A (completed) and B (6 s of 10 s, not completed), the answer."""
    a, b = f"{comparison_id}-a", f"{comparison_id}-b"
    return [
        generation(a, prompt),
        generation(b, prompt, version="v2"),
        comparison(comparison_id, prompt, a, b, user=user),
        playback(comparison_id, a, 10_000, user=user, completed=True),
        playback(comparison_id, b, 6_000, user=user),
        preference(comparison_id, choice, user=user, minutes=minutes),
    ]


def write_dataset(root: Path | str, events: Iterable[Message], *, files_per_kind: int = 1) -> None:
    """Write ``events`` as the recorder would: per kind and UTC day, spread over ``files_per_kind`` files."""
    groups: dict[tuple[type[Message], datetime.date], list[Message]] = defaultdict(list)
    for event in events:
        groups[(type(event), event.header.occurred_at.ToDatetime().date())].append(event)
    now = datetime.datetime.now(datetime.UTC)
    for (message_type, date), group in groups.items():
        for part in range(files_per_kind):
            chunk = group[part::files_per_kind]
            if chunk:
                recorded = [RecordedEvent(e, now, i) for i, e in enumerate(chunk)]
                table = to_table(recorded, message_type)
                write_durably(part_url(str(root), kind_of(message_type), date), parquet_bytes(table))
