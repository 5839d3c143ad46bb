import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DisplayOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPLAY_ORDER_UNSPECIFIED: _ClassVar[DisplayOrder]
    DISPLAY_ORDER_A_FIRST: _ClassVar[DisplayOrder]
    DISPLAY_ORDER_B_FIRST: _ClassVar[DisplayOrder]

class CanarySlot(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANARY_SLOT_UNSPECIFIED: _ClassVar[CanarySlot]
    CANARY_SLOT_NONE: _ClassVar[CanarySlot]
    CANARY_SLOT_A: _ClassVar[CanarySlot]
    CANARY_SLOT_B: _ClassVar[CanarySlot]

class Choice(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHOICE_UNSPECIFIED: _ClassVar[Choice]
    CHOICE_A: _ClassVar[Choice]
    CHOICE_B: _ClassVar[Choice]
    CHOICE_TIE: _ClassVar[Choice]
    CHOICE_NONE: _ClassVar[Choice]

class RolloutAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_ACTION_UNSPECIFIED: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_CANARY_STARTED: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_PROMOTED: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_ROLLED_BACK: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_TRAFFIC_CHANGED: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_CANARY_REQUESTED: _ClassVar[RolloutAction]
DISPLAY_ORDER_UNSPECIFIED: DisplayOrder
DISPLAY_ORDER_A_FIRST: DisplayOrder
DISPLAY_ORDER_B_FIRST: DisplayOrder
CANARY_SLOT_UNSPECIFIED: CanarySlot
CANARY_SLOT_NONE: CanarySlot
CANARY_SLOT_A: CanarySlot
CANARY_SLOT_B: CanarySlot
CHOICE_UNSPECIFIED: Choice
CHOICE_A: Choice
CHOICE_B: Choice
CHOICE_TIE: Choice
CHOICE_NONE: Choice
ROLLOUT_ACTION_UNSPECIFIED: RolloutAction
ROLLOUT_ACTION_CANARY_STARTED: RolloutAction
ROLLOUT_ACTION_PROMOTED: RolloutAction
ROLLOUT_ACTION_ROLLED_BACK: RolloutAction
ROLLOUT_ACTION_TRAFFIC_CHANGED: RolloutAction
ROLLOUT_ACTION_CANARY_REQUESTED: RolloutAction

class EventHeader(_message.Message):
    __slots__ = ("event_id", "occurred_at", "schema_version", "request_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    occurred_at: _timestamp_pb2.Timestamp
    schema_version: int
    request_id: str
    def __init__(self, event_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., schema_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class PolicyRef(_message.Message):
    __slots__ = ("model_uri", "version")
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_uri: str
    version: str
    def __init__(self, model_uri: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("duration_s", "temperature", "top_k", "guidance_scale")
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    duration_s: float
    temperature: float
    top_k: int
    guidance_scale: float
    def __init__(self, duration_s: _Optional[float] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., guidance_scale: _Optional[float] = ...) -> None: ...

class ClipRef(_message.Message):
    __slots__ = ("clip_id", "policy", "audio_uri", "duration_s")
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AUDIO_URI_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    clip_id: str
    policy: PolicyRef
    audio_uri: str
    duration_s: float
    def __init__(self, clip_id: _Optional[str] = ..., policy: _Optional[_Union[PolicyRef, _Mapping]] = ..., audio_uri: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...

class GenerationCompleted(_message.Message):
    __slots__ = ("header", "clip_id", "prompt", "policy", "sampling", "seed", "duration_s", "audio_uri", "codes_uri", "latency_ms", "sample_rate")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    AUDIO_URI_FIELD_NUMBER: _ClassVar[int]
    CODES_URI_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    clip_id: str
    prompt: str
    policy: PolicyRef
    sampling: SamplingParams
    seed: int
    duration_s: float
    audio_uri: str
    codes_uri: str
    latency_ms: float
    sample_rate: int
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., clip_id: _Optional[str] = ..., prompt: _Optional[str] = ..., policy: _Optional[_Union[PolicyRef, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ..., duration_s: _Optional[float] = ..., audio_uri: _Optional[str] = ..., codes_uri: _Optional[str] = ..., latency_ms: _Optional[float] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class ComparisonServed(_message.Message):
    __slots__ = ("header", "comparison_id", "prompt", "clip_a", "clip_b", "display_order", "user_id", "page_session", "canary_slot")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CLIP_A_FIELD_NUMBER: _ClassVar[int]
    CLIP_B_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_ORDER_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SESSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_SLOT_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    comparison_id: str
    prompt: str
    clip_a: ClipRef
    clip_b: ClipRef
    display_order: DisplayOrder
    user_id: str
    page_session: bool
    canary_slot: CanarySlot
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., comparison_id: _Optional[str] = ..., prompt: _Optional[str] = ..., clip_a: _Optional[_Union[ClipRef, _Mapping]] = ..., clip_b: _Optional[_Union[ClipRef, _Mapping]] = ..., display_order: _Optional[_Union[DisplayOrder, str]] = ..., user_id: _Optional[str] = ..., page_session: _Optional[bool] = ..., canary_slot: _Optional[_Union[CanarySlot, str]] = ...) -> None: ...

class Playback(_message.Message):
    __slots__ = ("header", "comparison_id", "clip_id", "listened_ms", "completed", "user_id", "page_session", "other_listener")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    LISTENED_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SESSION_FIELD_NUMBER: _ClassVar[int]
    OTHER_LISTENER_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    comparison_id: str
    clip_id: str
    listened_ms: int
    completed: bool
    user_id: str
    page_session: bool
    other_listener: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., comparison_id: _Optional[str] = ..., clip_id: _Optional[str] = ..., listened_ms: _Optional[int] = ..., completed: _Optional[bool] = ..., user_id: _Optional[str] = ..., page_session: _Optional[bool] = ..., other_listener: _Optional[bool] = ...) -> None: ...

class PreferenceSubmitted(_message.Message):
    __slots__ = ("header", "comparison_id", "choice", "user_id", "page_session", "other_listener")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SESSION_FIELD_NUMBER: _ClassVar[int]
    OTHER_LISTENER_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    comparison_id: str
    choice: Choice
    user_id: str
    page_session: bool
    other_listener: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., comparison_id: _Optional[str] = ..., choice: _Optional[_Union[Choice, str]] = ..., user_id: _Optional[str] = ..., page_session: _Optional[bool] = ..., other_listener: _Optional[bool] = ...) -> None: ...

class QualityRating(_message.Message):
    __slots__ = ("header", "clip_id", "rater_id", "score", "page_session")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    RATER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SESSION_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    clip_id: str
    rater_id: str
    score: int
    page_session: bool
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., clip_id: _Optional[str] = ..., rater_id: _Optional[str] = ..., score: _Optional[int] = ..., page_session: _Optional[bool] = ...) -> None: ...

class PolicyRollout(_message.Message):
    __slots__ = ("header", "action", "stable_model_uri", "canary_model_uri", "canary_percent", "reason", "rollout_id", "canary_version", "actor", "evidence")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STABLE_MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    CANARY_MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    action: RolloutAction
    stable_model_uri: str
    canary_model_uri: str
    canary_percent: float
    reason: str
    rollout_id: str
    canary_version: str
    actor: str
    evidence: RolloutEvidence
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., action: _Optional[_Union[RolloutAction, str]] = ..., stable_model_uri: _Optional[str] = ..., canary_model_uri: _Optional[str] = ..., canary_percent: _Optional[float] = ..., reason: _Optional[str] = ..., rollout_id: _Optional[str] = ..., canary_version: _Optional[str] = ..., actor: _Optional[str] = ..., evidence: _Optional[_Union[RolloutEvidence, _Mapping]] = ...) -> None: ...

class RolloutEvidence(_message.Message):
    __slots__ = ("canary_wins", "stable_wins", "ties", "nones", "log_e_promote", "log_e_rollback", "win_rate_low", "win_rate_high", "guardrail_failures")
    CANARY_WINS_FIELD_NUMBER: _ClassVar[int]
    STABLE_WINS_FIELD_NUMBER: _ClassVar[int]
    TIES_FIELD_NUMBER: _ClassVar[int]
    NONES_FIELD_NUMBER: _ClassVar[int]
    LOG_E_PROMOTE_FIELD_NUMBER: _ClassVar[int]
    LOG_E_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    WIN_RATE_LOW_FIELD_NUMBER: _ClassVar[int]
    WIN_RATE_HIGH_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    canary_wins: int
    stable_wins: int
    ties: int
    nones: int
    log_e_promote: float
    log_e_rollback: float
    win_rate_low: float
    win_rate_high: float
    guardrail_failures: int
    def __init__(self, canary_wins: _Optional[int] = ..., stable_wins: _Optional[int] = ..., ties: _Optional[int] = ..., nones: _Optional[int] = ..., log_e_promote: _Optional[float] = ..., log_e_rollback: _Optional[float] = ..., win_rate_low: _Optional[float] = ..., win_rate_high: _Optional[float] = ..., guardrail_failures: _Optional[int] = ...) -> None: ...

class PipelineRunFailed(_message.Message):
    __slots__ = ("header", "run_name", "state", "task_name", "error_message")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    header: EventHeader
    run_name: str
    state: str
    task_name: str
    error_message: str
    def __init__(self, header: _Optional[_Union[EventHeader, _Mapping]] = ..., run_name: _Optional[str] = ..., state: _Optional[str] = ..., task_name: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("generation_completed", "comparison_served", "playback", "preference_submitted", "quality_rating", "policy_rollout", "pipeline_run_failed")
    GENERATION_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_SERVED_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    QUALITY_RATING_FIELD_NUMBER: _ClassVar[int]
    POLICY_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_RUN_FAILED_FIELD_NUMBER: _ClassVar[int]
    generation_completed: GenerationCompleted
    comparison_served: ComparisonServed
    playback: Playback
    preference_submitted: PreferenceSubmitted
    quality_rating: QualityRating
    policy_rollout: PolicyRollout
    pipeline_run_failed: PipelineRunFailed
    def __init__(self, generation_completed: _Optional[_Union[GenerationCompleted, _Mapping]] = ..., comparison_served: _Optional[_Union[ComparisonServed, _Mapping]] = ..., playback: _Optional[_Union[Playback, _Mapping]] = ..., preference_submitted: _Optional[_Union[PreferenceSubmitted, _Mapping]] = ..., quality_rating: _Optional[_Union[QualityRating, _Mapping]] = ..., policy_rollout: _Optional[_Union[PolicyRollout, _Mapping]] = ..., pipeline_run_failed: _Optional[_Union[PipelineRunFailed, _Mapping]] = ...) -> None: ...
