"""Tests of the protobuf event schemas, their generated code and their NATS subjects."""

from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from musicrl import proto_codegen
from musicrl.bus.subjects import EVENT_TYPES, SUBJECT_PREFIX, subject_for
from musicrl.v1 import events_pb2


REPO_ROOT = Path(__file__).resolve().parents[3]
GENERATED = ["musicrl/v1/events_pb2.py", "musicrl/v1/events_pb2.pyi"]


def _header(n: int = 1) -> events_pb2.EventHeader:
    return events_pb2.EventHeader(
        event_id=f"3f1c2a4e-0000-4000-8000-00000000000{n}",
        occurred_at=timestamp_pb2.Timestamp(seconds=1_760_000_000 + n, nanos=123_000_000),
        schema_version=2,
        request_id=f"req-{n}",
    )


def _policy(tag: str) -> events_pb2.PolicyRef:
    return events_pb2.PolicyRef(model_uri=f"s3://musicrl/policies/{tag}", version=tag)


def _full_events() -> dict[type[Message], Message]:
    """One event of every kind with every field set to a non-default value."""
    return {
        events_pb2.GenerationCompleted: events_pb2.GenerationCompleted(
            header=_header(1),
            clip_id="clip-1",
            prompt="lofi piano with rain",
            policy=_policy("v3"),
            sampling=events_pb2.SamplingParams(duration_s=10.0, temperature=0.9, top_k=250, guidance_scale=3.0),
            seed=2**63 + 7,
            duration_s=9.5,
            audio_uri="s3://musicrl/audio/clip-1.wav",
            codes_uri="s3://musicrl/codes/clip-1.npy",
            latency_ms=1234.5,
            sample_rate=32000,
        ),
        events_pb2.ComparisonServed: events_pb2.ComparisonServed(
            header=_header(2),
            comparison_id="cmp-1",
            prompt="lofi piano with rain",
            clip_a=events_pb2.ClipRef(clip_id="clip-1", policy=_policy("v3"), audio_uri="s3://a.wav", duration_s=10.0),
            clip_b=events_pb2.ClipRef(clip_id="clip-2", policy=_policy("v4"), audio_uri="s3://b.wav", duration_s=9.5),
            display_order=events_pb2.DISPLAY_ORDER_B_FIRST,
            user_id="u-5e884898",
            page_session=True,
            canary_slot=events_pb2.CANARY_SLOT_B,
        ),
        events_pb2.Playback: events_pb2.Playback(
            header=_header(3),
            comparison_id="cmp-1",
            clip_id="clip-2",
            listened_ms=8_000,
            completed=True,
            user_id="u-5e884898",
            page_session=True,
            other_listener=True,
        ),
        events_pb2.PreferenceSubmitted: events_pb2.PreferenceSubmitted(
            header=_header(4),
            comparison_id="cmp-1",
            choice=events_pb2.CHOICE_TIE,
            user_id="u-5e884898",
            page_session=True,
            other_listener=True,
        ),
        events_pb2.QualityRating: events_pb2.QualityRating(
            header=_header(5), clip_id="clip-1", rater_id="r-42", score=4, page_session=True
        ),
        events_pb2.PolicyRollout: events_pb2.PolicyRollout(
            header=_header(6),
            action=events_pb2.ROLLOUT_ACTION_CANARY_STARTED,
            stable_model_uri="s3://musicrl/policies/v3",
            canary_model_uri="s3://musicrl/policies/v4",
            canary_percent=10.0,
            reason="manual",
            rollout_id="3f2b8c1d9e0a4b5c8d7e6f5a4b3c2d1e",
            canary_version="v4",
            actor="controller",
            evidence=events_pb2.RolloutEvidence(
                canary_wins=70,
                stable_wins=30,
                ties=5,
                nones=2,
                log_e_promote=4.1,
                log_e_rollback=-9.0,
                win_rate_low=0.55,
                win_rate_high=0.82,
                guardrail_failures=1,
            ),
        ),
        events_pb2.PipelineRunFailed: events_pb2.PipelineRunFailed(
            header=_header(7),
            run_name="musicrl-retraining-2026-12-01",
            state="FAILED",
            task_name="retraining",
            error_message="rl-ru: stage RU saved no checkpoint",
        ),
    }


def _unset_fields(message: Message, prefix: str = "") -> list[str]:
    """Names of the fields (recursively, in sub-messages) still at their default value."""
    unset = []
    for field in message.DESCRIPTOR.fields:
        name = prefix + field.name
        if field.message_type is not None:
            if not message.HasField(field.name):
                unset.append(name)
            elif field.message_type.full_name != "google.protobuf.Timestamp":
                unset += _unset_fields(getattr(message, field.name), name + ".")
            elif getattr(message, field.name) == timestamp_pb2.Timestamp():
                unset.append(name)
        elif getattr(message, field.name) == field.default_value:
            unset.append(name)
    return unset


def test_regeneration_gives_no_diff(tmp_path: Path) -> None:
    generated = proto_codegen.generate(tmp_path)

    assert sorted(p.relative_to(tmp_path).as_posix() for p in generated) == sorted(GENERATED)
    for rel in GENERATED:
        assert (tmp_path / rel).read_bytes() == (REPO_ROOT / rel).read_bytes(), (
            f"{rel} is stale: run `make proto` and commit the result"
        )


def test_codegen_raises_when_protoc_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto_codegen.protoc, "main", lambda args: 1)

    with pytest.raises(RuntimeError, match="protoc exited with status 1"):
        proto_codegen.generate(tmp_path)


def test_fixture_covers_every_event_type() -> None:
    assert set(_full_events()) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_every_event_round_trips_with_all_fields_set(event_type: type[Message]) -> None:
    event = _full_events()[event_type]
    assert _unset_fields(event) == [], "the test event must set every field"

    parsed = event_type.FromString(event.SerializeToString())

    assert parsed == event
    assert _unset_fields(parsed) == []
    assert parsed.header.occurred_at.ToNanoseconds() == event.header.occurred_at.ToNanoseconds()
    assert parsed.header.event_id == event.header.event_id


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_every_event_has_header_as_field_1(event_type: type[Message]) -> None:
    field = event_type.DESCRIPTOR.fields_by_number[1]

    assert field.name == "header"
    assert field.message_type is events_pb2.EventHeader.DESCRIPTOR


def test_old_reader_ignores_unknown_fields() -> None:
    event = _full_events()[events_pb2.PreferenceSubmitted]
    # Field 99, wire type 0 (varint): tag = 99 << 3 | 0 = 792 = varint b"\x98\x06"; value 300 = b"\xac\x02".
    unknown_field = b"\x98\x06\xac\x02"
    data = event.SerializeToString() + unknown_field

    parsed = events_pb2.PreferenceSubmitted.FromString(data)

    assert parsed.header == event.header
    assert parsed.comparison_id == "cmp-1"
    assert parsed.choice == events_pb2.CHOICE_TIE
    assert parsed.user_id == "u-5e884898"
    # The unknown field was really parsed (and kept for re-serialisation), not silently dropped as garbage.
    assert parsed.SerializeToString() == data


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        (events_pb2.GenerationCompleted, "musicrl.v1.generation_completed"),
        (events_pb2.ComparisonServed, "musicrl.v1.comparison_served"),
        (events_pb2.Playback, "musicrl.v1.playback"),
        (events_pb2.PreferenceSubmitted, "musicrl.v1.preference_submitted"),
        (events_pb2.QualityRating, "musicrl.v1.quality_rating"),
        (events_pb2.PolicyRollout, "musicrl.v1.policy_rollout"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.DESCRIPTOR.name,
)
def test_subject_for(event_type: type[Message], subject: str) -> None:
    assert event_type in EVENT_TYPES
    assert subject_for(event_type) == subject
    assert subject_for(event_type()) == subject


def test_subjects_are_distinct_and_prefixed() -> None:
    subjects = [subject_for(t) for t in EVENT_TYPES]

    assert len(EVENT_TYPES) == 7
    assert len(set(subjects)) == len(subjects)
    assert all(s.startswith(SUBJECT_PREFIX + ".") for s in subjects)


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.DESCRIPTOR.name)
def test_envelope_holds_each_kind(event_type: type[Message]) -> None:
    event = _full_events()[event_type]
    oneof = events_pb2.Envelope.DESCRIPTOR.oneofs_by_name["event"]
    (field,) = [f for f in oneof.fields if f.message_type is event_type.DESCRIPTOR]
    envelope = events_pb2.Envelope(**{field.name: event})

    parsed = events_pb2.Envelope.FromString(envelope.SerializeToString())

    assert parsed.WhichOneof("event") == field.name
    assert getattr(parsed, field.name) == event
    # The oneof field name is the subject kind, so a dead-letter reader can route on it.
    assert subject_for(event) == f"{SUBJECT_PREFIX}.{field.name}"


def test_envelope_oneof_covers_every_kind() -> None:
    oneof = events_pb2.Envelope.DESCRIPTOR.oneofs_by_name["event"]

    assert {f.message_type.name for f in oneof.fields} == {t.DESCRIPTOR.name for t in EVENT_TYPES}
