"""Settings of a snapshot, kept apart from the snapshot code so the CLI builds its flags without pyarrow."""

from dataclasses import dataclass

from musicrl.errors import InvalidRequest


# Half of a clip: enough to judge it; the gateway reports the same threshold to listeners with each comparison.
DEFAULT_MIN_LISTENED_SHARE = 0.5
# train fits the model, validation chooses among its epochs, test is reported and chooses nothing
SPLITS = ("train", "validation", "test")


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
        validation_fraction: Share of prompts (not rows) in the validation split, which trainers choose
            their best epoch on; 0 to 1.
        test_fraction: Share of prompts in the test split, which trainers only report on; 0 to 1, and
            ``validation_fraction + test_fraction`` at most 1.
        split_salt: Mixed into the prompt hash; change it to draw a different split.
        consolidate_codes: Fetch the codes of every clip of the preference splits once and pack them into
            int16 shards inside the snapshot (``codes/``), which the preference trainer memory-maps; false
            leaves them out (a snapshot for the quality model, or of a clip store this machine cannot
            reach), and the preference trainer then fetches them itself, each run.
        codes_shard_bytes: Most bytes of packed codes per shard file.
    """

    require_listened: bool = True
    min_listened_ms: int = 0  # no floor in ms by default: the share below scales with the clip
    min_listened_share: float = DEFAULT_MIN_LISTENED_SHARE
    ties: str = "drop"  # a Bradley-Terry model learns nothing from a tie unless it models ties
    none: str = "drop"  # "neither is good" orders nothing
    validation_fraction: float = 0.1  # ~10% of prompts: enough pairs to rank epochs to a few points of accuracy
    test_fraction: float = 0.1  # as many again, held out from both training and selection
    split_salt: str = "musicrl"
    consolidate_codes: bool = True
    codes_shard_bytes: int = 64 * 2**20  # 64 MiB: ~110 files for the paper's 600k clips of 30 s, one GET each

    def __post_init__(self) -> None:
        for name in ("ties", "none"):
            if getattr(self, name) not in ("drop", "keep"):
                raise InvalidRequest(f"{name} must be 'drop' or 'keep', got {getattr(self, name)!r}")
        if self.min_listened_ms < 0:
            raise InvalidRequest(f"min_listened_ms must be >= 0, got {self.min_listened_ms}")
        if not 0.0 <= self.min_listened_share <= 1.0:
            raise InvalidRequest(f"min_listened_share must be between 0 and 1, got {self.min_listened_share}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidRequest(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.codes_shard_bytes < 2:
            raise InvalidRequest(
                f"codes_shard_bytes must hold at least one int16 code (2 bytes), got {self.codes_shard_bytes}"
            )
        if self.validation_fraction + self.test_fraction > 1.0:
            raise InvalidRequest(
                f"validation_fraction + test_fraction must be at most 1, got {self.validation_fraction} + "
                f"{self.test_fraction}: lower one of them"
            )
