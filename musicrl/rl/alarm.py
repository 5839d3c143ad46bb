"""The over-optimisation alarm: a reward the run does not optimise falls while the trained one rises.

MusicRL's reward models are imperfect proxies; pushing one too far degrades what it does not measure. The
alarm watches a held-out reward: when its mean over the last ``window`` steps falls more than ``max_drop``
below the best such mean seen, the run is told (and stops, or keeps the best checkpoint, by config).
"""

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class OverOptimisationAlarm:
    """Tracks a held-out reward step by step.

    Attributes:
        window: Steps averaged.
        max_drop: How far the window mean may fall below its best.
    """

    window: int
    max_drop: float
    best_mean: float = float("-inf")
    best_step: int = -1
    _recent: deque[float] = field(default_factory=deque)

    def update(self, step: int, value: float) -> bool:
        """Record the held-out reward of ``step``; True when the alarm fires."""
        self._recent.append(value)
        if len(self._recent) > self.window:
            self._recent.popleft()
        if len(self._recent) < self.window:
            return False
        mean = sum(self._recent) / self.window
        if mean > self.best_mean:
            self.best_mean, self.best_step = mean, step
        return self.best_mean - mean > self.max_drop

    @property
    def improved_at(self) -> int:
        """The step whose window mean is the best so far (-1 before a full window)."""
        return self.best_step
