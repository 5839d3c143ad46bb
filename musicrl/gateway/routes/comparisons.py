"""A/B comparisons and their feedback: the paper's data collection (MusicRL §3.3)."""

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from musicrl.config import SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.gateway.comparisons import ServedComparison
from musicrl.gateway.deps import FeedbackCaller, GenerateCaller, IdempotencyDep, StateDep, user_id
from musicrl.gateway.routes import AUTHENTICATED, errors
from musicrl.gateway.schemas import (
    UUID_PATTERN,
    ComparisonClipPublic,
    ComparisonCreate,
    ComparisonPublic,
    EventPublic,
    PlaybackCreate,
    PreferenceCreate,
)


router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"])
ComparisonId = Annotated[str, Path(pattern=UUID_PATTERN, description="Comparison id.")]
FEEDBACK_LEASE_S = 0.0  # feedback only publishes events with derived ids: a concurrent retry is harmless


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 409, 503),
    summary="Two clips for one prompt, in random order",
)
async def create_comparison(
    comparison_in: ComparisonCreate, state: StateDep, caller: GenerateCaller, idem: IdempotencyDep, response: Response
) -> ComparisonPublic:
    limits = state.config.limits
    prompt = comparison_in.prompt
    if not prompt.strip():
        raise InvalidRequest("prompt is blank")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequest(f"prompt has {len(prompt)} characters; the maximum is {limits.max_prompt_chars}")
    params = SamplingParams(duration_s=limits.comparison_duration_s)
    listener = user_id(state, caller, comparison_in.listener_id)

    async def serve() -> ComparisonPublic:
        return comparison_public(await state.comparisons.serve(prompt, params, listener, idem))

    # both clips are generated inside the request: the lease covers the longest wait the server allows
    return await idem.run(serve, ComparisonPublic, limits.wait_timeout_s, response)


@router.post(
    "/{comparison_id}/playback",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 404, 409, 503),
    summary="Report how much of a clip was listened to",
)
async def create_playback(
    comparison_id: ComparisonId,
    playback_in: PlaybackCreate,
    state: StateDep,
    caller: FeedbackCaller,
    idem: IdempotencyDep,
    response: Response,
) -> EventPublic:
    listener = user_id(state, caller, playback_in.listener_id)

    async def record() -> EventPublic:
        event_id = idem.new_id("event/playback")
        await state.feedback.playback(
            comparison_id, playback_in.clip_id, playback_in.listened_ms, playback_in.completed, listener, event_id
        )
        return EventPublic(event_id=event_id)

    return await idem.run(record, EventPublic, FEEDBACK_LEASE_S, response)


@router.post(
    "/{comparison_id}/preference",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 404, 409, 503),
    summary="Award the trophy (or a tie, or none)",
)
async def create_preference(
    comparison_id: ComparisonId,
    preference_in: PreferenceCreate,
    state: StateDep,
    caller: FeedbackCaller,
    idem: IdempotencyDep,
    response: Response,
) -> EventPublic:
    listener = user_id(state, caller, preference_in.listener_id)

    async def record() -> EventPublic:
        event_id = idem.new_id("event/preference")
        await state.feedback.preference(comparison_id, preference_in.choice, listener, event_id)
        return EventPublic(event_id=event_id)

    return await idem.run(record, EventPublic, FEEDBACK_LEASE_S, response)


def comparison_public(served: ServedComparison) -> ComparisonPublic:
    a, b = served.clips
    clips = [
        ComparisonClipPublic(slot="a", id=a.clip_id, audio_url=f"/v1/clips/{a.clip_id}.wav"),
        ComparisonClipPublic(slot="b", id=b.clip_id, audio_url=f"/v1/clips/{b.clip_id}.wav"),
    ]
    if not served.stored.a_first:
        clips.reverse()
    return ComparisonPublic(id=served.stored.id, prompt=served.stored.prompt, clips=clips)
