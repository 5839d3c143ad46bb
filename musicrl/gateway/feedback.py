"""Feedback events: playback telemetry, preferences (the trophy) and quality ratings."""

import asyncio

from musicrl.bus.events import new_header
from musicrl.bus.publisher import EventPublisher
from musicrl.data.clips import ClipStore
from musicrl.errors import NotFound
from musicrl.gateway.auth import Listener
from musicrl.gateway.comparisons import ComparisonService
from musicrl.v1 import events_pb2


CHOICES = {
    "a": events_pb2.CHOICE_A,
    "b": events_pb2.CHOICE_B,
    "tie": events_pb2.CHOICE_TIE,
    "none": events_pb2.CHOICE_NONE,
}


class FeedbackService:
    """Checks feedback against what was served, then publishes it.

    Args:
        comparisons: Looks comparisons up.
        clip_store: Checks that a rated clip exists.
        publisher: Publishes the events.
    """

    def __init__(self, comparisons: ComparisonService, clip_store: ClipStore, publisher: EventPublisher) -> None:
        self.comparisons = comparisons
        self.clip_store = clip_store
        self.publisher = publisher

    async def playback(
        self, comparison_id: str, clip_id: str, listened_ms: int, completed: bool, listener: Listener, event_id: str
    ) -> None:
        """Publish a Playback event.

        Raises:
            NotFound: An unknown comparison.
            InvalidRequest: A clip of another comparison.
            Forbidden: A page session's feedback on a comparison served to another listener.
        """
        comparison = await self.comparisons.get(comparison_id)
        other_listener = comparison.check_listener(listener)
        comparison.slot_of(clip_id)
        await self.publisher.publish(
            events_pb2.Playback(
                header=new_header(event_id),
                comparison_id=comparison_id,
                clip_id=clip_id,
                listened_ms=listened_ms,
                completed=completed,
                user_id=listener.user_id,
                page_session=listener.page_session,
                other_listener=other_listener,
            )
        )

    async def preference(self, comparison_id: str, choice: str, listener: Listener, event_id: str) -> None:
        """Publish a PreferenceSubmitted event.

        Raises:
            NotFound: An unknown comparison.
            Forbidden: A page session's feedback on a comparison served to another listener.
        """
        comparison = await self.comparisons.get(comparison_id)
        other_listener = comparison.check_listener(listener)
        await self.publisher.publish(
            events_pb2.PreferenceSubmitted(
                header=new_header(event_id),
                comparison_id=comparison_id,
                choice=CHOICES[choice],
                user_id=listener.user_id,
                page_session=listener.page_session,
                other_listener=other_listener,
            )
        )

    async def rating(self, clip_id: str, score: int, rater: Listener, event_id: str) -> None:
        """Publish a QualityRating event. Raises NotFound for a clip that is not in the store."""
        if not await asyncio.to_thread(self.clip_store.exists, clip_id):
            raise NotFound(f"no clip {clip_id!r}")
        await self.publisher.publish(
            events_pb2.QualityRating(
                header=new_header(event_id),
                clip_id=clip_id,
                rater_id=rater.user_id,
                score=score,
                page_session=rater.page_session,
            )
        )
