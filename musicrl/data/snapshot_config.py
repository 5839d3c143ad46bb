"""Settings of a snapshot, kept apart from the snapshot code so the CLI builds its flags without pyarrow."""

from dataclasses import dataclass

from musicrl.errors import InvalidRequest


# Half of a clip: enough to judge it; the gateway reports the same threshold to listeners with each comparison.
DEFAULT_MIN_LISTENED_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """Which feedback a snapshot keeps and how it splits it.

    Attributes:
        require_listened: Keep a pair only if its user listened to both clips (the MusicRL paper keeps only these).
        min_listened_ms: A playback counts as listening when it reached the end or lasted at least this
            many milliseconds (and more than 0) and at least ``min_listened_share`` of the clip.
        min_listened_share: Share of the clip's length (from its ``generation_completed``) that a playback
            must last, unless it reached the end.
        ties: ``drop`` or ``keep`` answers that call both clips equally good (label 0.5).
        none: ``drop`` or ``keep`` answers that award no trophy (label null).
        eval_fraction: Share of prompts (not rows) that go to the eval split, 0 to 1.
        split_salt: Mixed into the prompt hash; change it to draw a different split.
    """

    require_listened: bool = True
    min_listened_ms: int = 0  # no floor in ms by default: the share below scales with the clip
    min_listened_share: float = DEFAULT_MIN_LISTENED_SHARE
    ties: str = "drop"  # a Bradley-Terry model learns nothing from a tie unless it models ties
    none: str = "drop"  # "neither is good" orders nothing
    eval_fraction: float = 0.1  # ~10% of prompts: enough held-out pairs to read RM accuracy to a few points
    split_salt: str = "musicrl"

    def __post_init__(self) -> None:
        for name in ("ties", "none"):
            if getattr(self, name) not in ("drop", "keep"):
                raise InvalidRequest(f"{name} must be 'drop' or 'keep', got {getattr(self, name)!r}")
        if self.min_listened_ms < 0:
            raise InvalidRequest(f"min_listened_ms must be >= 0, got {self.min_listened_ms}")
        if not 0.0 <= self.min_listened_share <= 1.0:
            raise InvalidRequest(f"min_listened_share must be between 0 and 1, got {self.min_listened_share}")
        if not 0.0 <= self.eval_fraction <= 1.0:
            raise InvalidRequest(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}")
