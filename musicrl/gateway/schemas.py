"""Request and reply bodies of the gateway's REST API (``XCreate`` in, ``XPublic`` out)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


CLIP_ID_PATTERN = r"^[0-9a-f]{32}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
LISTENER_ID = Field(
    default=None,
    max_length=128,
    description="Your own id for the person listening (API-key callers); pseudonymised before it is stored. "
    "Page sessions ignore it.",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx reply."""

    detail: str = Field(description="What went wrong, in a sentence.")


class GenerationCreate(_Strict):
    prompt: str = Field(min_length=1, max_length=4000, description="Text describing the music.")
    duration_s: float = Field(default=10.0, gt=0, le=120, description="Length of each clip in seconds.")
    num_clips: int = Field(default=1, ge=1, le=16, description="How many clips (different seeds).")
    temperature: float = Field(default=1.0, ge=0, le=10, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(default=250, ge=0, le=100_000, description="Top-k sampling; 0 keeps every token.")
    guidance_scale: float = Field(default=3.0, ge=1, le=30, description="Classifier-free guidance scale.")


class ClipPublic(BaseModel):
    id: str = Field(description="Clip id.")
    audio_url: str = Field(description="The clip as a WAV file.")
    codes_url: str = Field(description="The clip's audio tokens as a NumPy .npy file, int64 [K, T].")


class GenerationPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    prompt: str
    clips: list[ClipPublic] = Field(description="The clips, once the job is done.")
    error: str | None = Field(default=None, description="Why the job failed.")
    created_at: str
    updated_at: str


class ComparisonCreate(_Strict):
    prompt: str = Field(min_length=1, max_length=4000, description="Text describing the music.")
    listener_id: str | None = LISTENER_ID


class ComparisonClipPublic(BaseModel):
    slot: Literal["a", "b"] = Field(description="The clip's slot: what a preference's choice refers to.")
    id: str
    audio_url: str


class ComparisonPublic(BaseModel):
    id: str
    prompt: str
    clips: list[ComparisonClipPublic] = Field(description="Both clips, in the order to show them.")


class PlaybackCreate(_Strict):
    clip_id: str = Field(pattern=CLIP_ID_PATTERN)
    listened_ms: int = Field(ge=0, le=24 * 3600 * 1000, description="Milliseconds actually played so far.")
    completed: bool = Field(default=False, description="Whether playback reached the end.")
    listener_id: str | None = LISTENER_ID


class PreferenceCreate(_Strict):
    choice: Literal["a", "b", "tie", "none"] = Field(
        description="The slot that won the trophy, a tie, or none (no trophy awarded)."
    )
    listener_id: str | None = LISTENER_ID


class RatingCreate(_Strict):
    clip_id: str = Field(pattern=CLIP_ID_PATTERN)
    score: int = Field(ge=1, le=5, description="Acoustic quality, 1 (bad) to 5 (excellent).")
    listener_id: str | None = LISTENER_ID


class EventPublic(BaseModel):
    """A feedback event, stored on the bus before this reply was sent."""

    event_id: str


class PolicyEndpointPublic(BaseModel):
    url: str = Field(description="host:port of the policy's V2 REST endpoint.")
    model_name: str
    model_uri: str
    version: str


class RoutingPublic(_Strict):
    stable: PolicyEndpointPublic
    canary: PolicyEndpointPublic | None = None
    canary_share: float = Field(default=0.0, ge=0, le=1, description="Share of comparisons against the canary.")


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = Field(default_factory=dict)
