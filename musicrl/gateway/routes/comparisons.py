"""A/B comparisons and their feedback: the paper's data collection (MusicRL §3.3)."""

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response, status

from musicrl.config import SamplingParams
from musicrl.gateway.clips import ClipRecord
from musicrl.gateway.comparisons import ServedComparison
from musicrl.gateway.deps import CompareCaller, FeedbackCaller, IdempotencyDep, StateDep, listener_of
from musicrl.gateway.limits import check_limits
from musicrl.gateway.routes import AUTHENTICATED, WITH_BODY, errors
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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 409, *WITH_BODY, 503),
    summary="Two clips for one prompt, in random order",
)
async def create_comparison(
    comparison_in: ComparisonCreate, state: StateDep, caller: CompareCaller, idem: IdempotencyDep, response: Response
) -> ComparisonPublic:
    limits = state.config.limits
    check_limits(comparison_in, limits)
    params = SamplingParams(duration_s=limits.comparison_duration_s)
    listener = listener_of(state, caller, comparison_in.listener_id)
    scoped = idem.for_user(caller.key_id, listener.user_id)

    async def serve() -> ComparisonPublic:
        served = await state.comparisons.serve(comparison_in.prompt, params, listener, scoped)
        return comparison_public(served, limits.min_listened_share)

    # both clips are generated inside the request: the lease covers the longest wait the server allows
    return await scoped.run(serve, ComparisonPublic, limits.wait_timeout_s, response)


@router.post(
    "/{comparison_id}/playback",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 404, 409, *WITH_BODY, 503),
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
    listener = listener_of(state, caller, playback_in.listener_id)
    scoped = idem.for_user(caller.key_id, listener.user_id)

    async def record() -> EventPublic:
        event_id = scoped.new_id("event/playback")
        await state.feedback.playback(
            comparison_id, playback_in.clip_id, playback_in.listened_ms, playback_in.completed, listener, event_id
        )
        return EventPublic(event_id=event_id)

    return await scoped.run_repeatable(record, response)


@router.post(
    "/{comparison_id}/preference",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 404, 409, *WITH_BODY, 503),
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
    listener = listener_of(state, caller, preference_in.listener_id)
    scoped = idem.for_user(caller.key_id, listener.user_id)

    async def record() -> EventPublic:
        event_id = scoped.new_id("event/preference")
        await state.feedback.preference(comparison_id, preference_in.choice, listener, event_id)
        return EventPublic(event_id=event_id)

    return await scoped.run_repeatable(record, response)


def comparison_public(served: ServedComparison, min_listened_share: float) -> ComparisonPublic:
    """The reply: both clips in display order, each with how much of it must be played for a vote to count.

    It names no policy, and every field is built the same way for either slot: the policies are drawn into
    the slots at random, and only the ComparisonServed event records which is which.
    """
    a, b = served.clips
    clips = [_clip_public("a", a, min_listened_share), _clip_public("b", b, min_listened_share)]
    if not served.stored.a_first:
        clips.reverse()
    return ComparisonPublic(id=served.stored.id, prompt=served.stored.prompt, clips=clips)


def _clip_public(slot: Literal["a", "b"], clip: ClipRecord, min_listened_share: float) -> ComparisonClipPublic:
    return ComparisonClipPublic(
        slot=slot,
        id=clip.clip_id,
        audio_url=f"/v1/clips/{clip.clip_id}.wav",
        duration_s=clip.duration_s,
        min_listened_ms=max(1, math.ceil(clip.duration_s * 1000 * min_listened_share)),
    )
