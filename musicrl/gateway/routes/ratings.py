"""Quality ratings: ``POST /v1/ratings`` (the MOS labels of the quality reward)."""

from fastapi import APIRouter, Response, status

from musicrl.gateway.deps import IdempotencyDep, RateCaller, StateDep, listener_of
from musicrl.gateway.routes import AUTHENTICATED, WITH_BODY, errors
from musicrl.gateway.schemas import EventPublic, RatingCreate


router = APIRouter(prefix="/v1/ratings", tags=["ratings"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, *AUTHENTICATED, 404, 409, *WITH_BODY, 503),
    summary="Rate a clip's acoustic quality from 1 to 5",
)
async def create_rating(
    rating_in: RatingCreate, state: StateDep, caller: RateCaller, idem: IdempotencyDep, response: Response
) -> EventPublic:
    rater = listener_of(state, caller, rating_in.listener_id)
    scoped = idem.for_user(caller.key_id, rater.user_id)

    async def record() -> EventPublic:
        event_id = scoped.new_id("event/rating")
        await state.feedback.rating(rating_in.clip_id, rating_in.score, rater, event_id)
        return EventPublic(event_id=event_id)

    return await scoped.run_repeatable(record, response)
