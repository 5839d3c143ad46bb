"""Request and reply bodies of the gateway's REST API (``XCreate`` in, ``XPublic`` out).

Request bodies are strict: a number must be a JSON number (``"3"`` and ``true`` are refused), NaN and
Infinity are refused, unknown fields are refused, and every string must be valid Unicode (a lone UTF-16
surrogate such as ``"\\ud800"`` cannot be stored or encoded). The limits an operator configures (prompt
length, clip length, clips per job) are checked by :mod:`musicrl.gateway.limits`, which also writes them
into the OpenAPI document.
"""

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


CLIP_ID_PATTERN = r"^[0-9a-f]{32}$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
LISTENER_ID = Field(
    default=None,
    min_length=1,
    max_length=128,
    description="Your own id for the person listening (API-key callers); pseudonymised before it is stored. "
    "Feedback must carry the listener id its comparison was served with. Page sessions ignore it.",
)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain more than white space")
    return text


Prompt = Annotated[
    str, Field(min_length=1, description="Text describing the music (not blank)."), AfterValidator(_not_blank)
]


MAX_SEED = 2**63 - 1  # the generator's seed input is INT64


class _Strict(BaseModel):
    # a misspelt field is an error, not silently ignored; "3" is not a number; NaN is not a length
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError("must be valid Unicode text (it holds a lone UTF-16 surrogate)") from e
        return value


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx reply."""

    detail: str = Field(description="What went wrong, in a sentence.")


class FieldErrorPublic(BaseModel):
    """One invalid field of a request (the input itself is never echoed back)."""

    loc: list[str | int] = Field(description="Where the field is: body, query, path or header, then its name.")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="A stable error kind, e.g. `string_too_long` or `int_type`.")


class ValidationErrorPublic(ErrorPublic):
    """A 422: the request is well-formed JSON but breaks the documented schema or limits."""

    errors: list[FieldErrorPublic] = Field(default_factory=list, description="Each invalid field.")


class GenerationCreate(_Strict):
    prompt: Prompt
    duration_s: float | None = Field(
        default=None,
        gt=0,
        description="Length of each clip in seconds; when omitted, 10 s or the server's maximum if that is lower.",
    )
    num_clips: int = Field(default=1, ge=1, description="How many clips (different seeds).")
    temperature: float = Field(default=1.0, ge=0, le=10, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(default=250, ge=0, le=100_000, description="Top-k sampling; 0 keeps every token.")
    guidance_scale: float = Field(default=3.0, ge=1, le=30, description="Classifier-free guidance scale.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first clip; clip i uses seed + i (mod 2^63). A clip depends only on the policy, "
        "prompt, settings and seed, so the same request to the same policy gives the same audio. Random when omitted.",
    )
    listener_id: str | None = LISTENER_ID


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
    prompt: Prompt
    listener_id: str | None = LISTENER_ID


class ComparisonClipPublic(BaseModel):
    slot: Literal["a", "b"] = Field(
        description="The clip's slot: what a preference's choice refers to. Clips are put in slots at random "
        "per comparison, so a slot says nothing about the model that made its clip."
    )
    id: str
    audio_url: str
    duration_s: float = Field(description="The clip's length in seconds.")
    min_listened_ms: int = Field(
        description="How much of the clip must be played (or played to the end) for a preference to count."
    )


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
    score: int = Field(ge=1, le=5, description="Acoustic quality, 1 (bad) to 5 (excellent); a JSON integer.")
    listener_id: str | None = LISTENER_ID


class EventPublic(BaseModel):
    """A feedback event, stored on the bus before this reply was sent."""

    event_id: str


class PolicyEndpointPublic(_Strict):
    url: str = Field(min_length=1, max_length=512, description="host:port of the policy's V2 REST endpoint.")
    model_name: str = Field(min_length=1, max_length=256)
    model_uri: str = Field(min_length=1, max_length=2048)
    version: str = Field(min_length=1, max_length=256)


class RoutingPublic(_Strict):
    stable: PolicyEndpointPublic
    canary: PolicyEndpointPublic | None = None
    canary_share: float = Field(default=0.0, ge=0, le=1, description="Share of comparisons against the canary.")


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = Field(default_factory=dict)
