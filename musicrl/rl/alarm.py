"""The over-optimisation alarm: a reward the run does not optimise falls while the trained one rises.

MusicRL's reward models are imperfect proxies; pushing one too far degrades what it does not measure. The
alarm watches a held-out reward: when its mean over the last ``window`` steps falls more than ``max_drop``
below the best such mean seen, the run is told once (and stops, or runs on keeping its best checkpoint, by
config). It fires on the transition into the drop, not on every step the drop lasts: each firing costs the
trainer a checkpoint, and a drop lasts for hundreds of steps at the paper's scale.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class OverOptimisationAlarm:
    """Tracks a held-out reward step by step.

    Attributes:
        window: Steps averaged.
        max_drop: How far the window mean may fall below its best.
        best_mean: The best window mean so far (-inf before a full window).
        best_step: The step of ``best_mean`` (-1 before a full window).
        dropped: Whether the current window mean is more than ``max_drop`` below the best.

    Raises:
        ValueError: ``window`` < 1 or a negative ``max_drop``.
    """

    window: int
    max_drop: float
    best_mean: float = float("-inf")
    best_step: int = -1
    dropped: bool = False
    _recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.window < 1 or not self.max_drop >= 0:
            raise ValueError(f"the alarm needs window >= 1 and max_drop >= 0, got {self.window} and {self.max_drop}")

    def update(self, step: int, value: float) -> bool:
        """Record the held-out reward of ``step``; True on the step the window mean first drops too far.

        The alarm re-arms once the window mean is back within ``max_drop`` of the best.
        """
        self._recent.append(value)
        if len(self._recent) > self.window:
            self._recent.popleft()
        mean = self.window_mean
        if mean is None:
            return False
        if mean > self.best_mean:
            self.best_mean, self.best_step = mean, step
        was_dropped, self.dropped = self.dropped, self.best_mean - mean > self.max_drop
        return self.dropped and not was_dropped

    @property
    def window_mean(self) -> float | None:
        """The mean of the last ``window`` values, or None before a full window."""
        if len(self._recent) < self.window:
            return None
        return sum(self._recent) / self.window

    @property
    def improved_at(self) -> int:
        """The step whose window mean is the best so far (-1 before a full window)."""
        return self.best_step

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same comparisons (plain data)."""
        return {"best_mean": self.best_mean, "best_step": self.best_step, "dropped": self.dropped,
                "recent": list(self._recent)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a state from before the window was saved keeps it empty)."""
        self.best_mean, self.best_step = float(state["best_mean"]), int(state["best_step"])
        self.dropped = bool(state.get("dropped", False))
        self._recent = deque(float(v) for v in state.get("recent", ()))
