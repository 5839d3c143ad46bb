"""Settings of the quality reward and of its training, kept apart so the CLI builds flags without torch."""

import math
from dataclasses import dataclass

from musicrl.errors import InvalidRequest


DEFAULT_EMBEDDER_URI = "tiny://clap?seed=0"  # offline default; production: hf://laion/larger_clap_music


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """How the quality model reads a clip (saved with the checkpoint, so scoring matches training).

    Attributes:
        window_s: Clips longer than this are scored on their first and last ``window_s`` seconds and the two
            rewards averaged (MusicRL §3.1); shorter clips are one window.
        segment_s: A window is embedded as the mean CLAP embedding of its segments of this length.
        min_segment_s: A trailing segment shorter than this is dropped (a window shorter than it is one segment).
        batch_size: Segments per forward pass of the audio tower.
    """

    window_s: float = 20.0  # MusicRL §3.1: the MOS model was trained on 20 s excerpts
    segment_s: float = 10.0  # CLAP embeds 10 s of audio at a time
    min_segment_s: float = 1.0  # shorter tails are mostly padding once CLAP repeats them to 10 s
    batch_size: int = 16  # ~16 × 1001 × 64 float32 spectrograms: small next to any model

    def __post_init__(self) -> None:
        for name in ("window_s", "segment_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidRequest(f"{name} must be a positive number of seconds, got {value}")
        if not (math.isfinite(self.min_segment_s) and 0 <= self.min_segment_s <= self.segment_s):
            raise InvalidRequest(
                f"min_segment_s must lie in [0, segment_s={self.segment_s}] seconds, got {self.min_segment_s}"
            )
        if self.batch_size < 1:
            raise InvalidRequest(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True, slots=True)
class QualityTrainConfig:
    """What ``train_quality`` reads, fits and writes. Plain str / int / float / bool fields (CLI flags).

    Attributes:
        snapshot_url: A snapshot folder holding ``ratings_{train,validation,test}.parquet``.
        out_url: Where the checkpoint, ``metrics.jsonl`` and the training plot go (path or fsspec URL).
        embedder_uri: The frozen CLAP whose audio embeddings the head reads.
        hidden_dim: Width of the head's hidden layer; 0 makes the head linear.
        epochs: Passes over the training ratings.
        batch_size: Ratings per optimiser step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: Fixes the head's initial weights and the batch order.
        min_ratings: Refuse to train on fewer training ratings than this.
        window_s: See :class:`QualityConfig`.
        segment_s: See :class:`QualityConfig`.
        min_segment_s: See :class:`QualityConfig`.
        embed_batch_size: Segments per forward pass of the audio tower while embedding the clips.
        device: Torch device for the embedder and the head.
        training_run: Identifier recorded in ``musicrl.json``; empty for none.
    """

    snapshot_url: str
    out_url: str
    embedder_uri: str = DEFAULT_EMBEDDER_URI
    hidden_dim: int = 64  # a small MLP: ratings number in the hundreds to thousands
    epochs: int = 100  # the head is tiny and the embeddings are cached: 100 epochs take seconds
    batch_size: int = 32
    lr: float = 3e-3  # AdamW on a ~4k-parameter head: converges in ~100 epochs on the synthetic test
    weight_decay: float = 1e-2  # AdamW's default; a mild guard against fitting rater noise
    seed: int = 0
    min_ratings: int = 20  # fewer cannot rank anything; the paper used thousands
    window_s: float = 20.0  # MusicRL §3.1
    segment_s: float = 10.0  # CLAP's input length
    min_segment_s: float = 1.0
    embed_batch_size: int = 16
    device: str = "cpu"
    training_run: str = ""

    def __post_init__(self) -> None:
        for name in ("snapshot_url", "out_url", "embedder_uri"):
            if not getattr(self, name).strip():
                raise InvalidRequest(f"{name} is required")
        for name in ("epochs", "batch_size", "min_ratings", "embed_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim < 0:
            raise InvalidRequest(f"hidden_dim must be >= 0 (0 makes the head linear), got {self.hidden_dim}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidRequest(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InvalidRequest(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.scoring()  # checks window_s, segment_s and min_segment_s

    def scoring(self) -> QualityConfig:
        """The scoring settings the trained model is saved with."""
        return QualityConfig(
            window_s=self.window_s,
            segment_s=self.segment_s,
            min_segment_s=self.min_segment_s,
            batch_size=self.embed_batch_size,
        )
