"""A bound on the generations one gateway replica runs at once.

Beyond the bound a request is refused at once with a 503 and ``Retry-After`` rather than queued: a queue
without bound turns a burst into minutes of latency for everyone and into memory the pod does not have,
while a refused client can retry elsewhere (another replica behind the Service) or later.
"""

import contextlib
from collections.abc import Iterator

from prometheus_client import Gauge

from musicrl.errors import Overloaded


IN_FLIGHT = Gauge("musicrl_gateway_generations_in_flight", "Generation jobs and comparisons running in this replica.")
RETRY_AFTER_S = 2.0  # a short clip takes seconds; clients should come back soon, not hammer


class GenerationSlots:
    """Counts generations in flight and refuses one past ``limit``.

    Args:
        limit: Most generations at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def take(self) -> "Slot":
        """Take a slot; release it with :meth:`Slot.release` (or use it as a context manager).

        Raises:
            Overloaded: Every slot is taken.
        """
        if self.in_flight >= self.limit:
            raise Overloaded(
                f"the gateway is running its maximum of {self.limit} generations; retry shortly", RETRY_AFTER_S
            )
        self.in_flight += 1
        IN_FLIGHT.inc()
        return Slot(self)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A slot for the duration of a ``with`` block."""
        slot = self.take()
        try:
            yield
        finally:
            slot.release()


class Slot:
    """One taken slot; releasing it twice is harmless.

    Args:
        slots: Where it was taken from.
    """

    def __init__(self, slots: GenerationSlots) -> None:
        self._slots: GenerationSlots | None = slots

    def release(self) -> None:
        """Give the slot back."""
        if self._slots is not None:
            self._slots.in_flight -= 1
            IN_FLIGHT.dec()
            self._slots = None
