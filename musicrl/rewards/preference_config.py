"""Settings of preference-reward training, kept apart from the trainer so the CLI builds its flags without torch."""

import math
from dataclasses import dataclass, field

from musicrl.errors import InvalidRequest


TIES = ("soft", "drop")


@dataclass(frozen=True, slots=True)
class PreferenceTrainConfig:
    """How to train the preference reward.

    Attributes:
        snapshot_url: Snapshot folder holding ``preferences_{train,validation,test}.parquet``.
        init_uri: The policy checkpoint the reward starts from (MusicRL: the generator).
        out_url: Where the checkpoint, ``metrics.jsonl`` and the plot go (path or fsspec URL).
        epochs: Passes over the training pairs.
        batch_size: Pairs per optimiser step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: Largest gradient norm; 0 disables clipping.
        seed: Seeds the pair order and dropout.
        ties: ``soft`` trains on ties with target 0.5; ``drop`` drops them.
        min_pairs: Fewest usable training pairs (after dropping none answers and dropped ties).
        freeze_text_encoder: Keep the T5 text encoder frozen (the decoder, projection and head train).
        window_frames: A clip longer than this scores the mean reward of its first and last this-many frames,
            in training as in serving (the checkpoint keeps it); at most what the model's positions cover.
        eval_batch_size: Pairs per forward pass when evaluating.
        num_workers: DataLoader worker processes reading the clips' codes from the snapshot's memory-mapped
            shards; 0 reads them in the training process.
        device: Torch device.
        training_run: Identifier recorded in the checkpoint; empty makes one from the time.
    """

    snapshot_url: str = field(metadata={"help": "snapshot folder with preferences_{train,validation,test}.parquet"})
    init_uri: str = field(metadata={"help": "policy checkpoint to start from (MusicRL: the generator)"})
    out_url: str = field(metadata={"help": "where the checkpoint, metrics.jsonl and the plot go"})
    epochs: int = 10
    batch_size: int = 16  # pairs; 32 clips per step fits musicgen-small on one GPU at 30 s
    lr: float = 1e-4  # a finetuning rate (the decoder already models the tokens); tiny test models use 3e-4
    weight_decay: float = 0.01  # AdamW's usual default
    grad_clip: float = 1.0  # standard for transformer finetuning
    seed: int = 0
    ties: str = "soft"  # a tie carries information under BT with soft targets: r_A ≈ r_B
    min_pairs: int = 20  # below this, eval accuracy is noise and the run is a mistake
    freeze_text_encoder: bool = True  # the preference is about the audio; T5 has nothing to learn from it
    window_frames: int = 1500  # 30 s at 50 frames/s, the clip length MusicGen was trained on
    eval_batch_size: int = 32
    num_workers: int = 2  # reading a batch from mapped shards takes ~1 ms: two workers keep any GPU fed
    device: str = "cpu"
    training_run: str = ""

    def __post_init__(self) -> None:
        for name in ("snapshot_url", "init_uri", "out_url"):
            if not getattr(self, name):
                raise InvalidRequest(f"{name} is required")
        for name in ("epochs", "batch_size", "min_pairs", "window_frames", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise InvalidRequest(
                f"num_workers must be >= 0 (0 reads codes in the training process), got {self.num_workers}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidRequest(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise InvalidRequest(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise InvalidRequest(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.ties not in TIES:
            raise InvalidRequest(f"ties must be one of {TIES}, got {self.ties!r}")


@dataclass(frozen=True, slots=True)
class ClapPreferenceTrainConfig:
    """How to train the CLAP baseline.

    Attributes:
        snapshot_url: Snapshot folder holding ``preferences_{train,validation,test}.parquet``.
        out_url: Where the checkpoint goes (path or fsspec URL).
        embedder_uri: The CLAP to embed with.
        epochs: Passes over the training pairs.
        batch_size: Pairs per optimiser step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: Seeds the pair order.
        ties: ``soft`` trains on ties with target 0.5; ``drop`` drops them.
        min_pairs: Fewest usable training pairs.
        device: Torch device.
    """

    snapshot_url: str
    out_url: str
    embedder_uri: str = "tiny://clap?seed=0"  # offline default; production: hf://laion/larger_clap_music
    epochs: int = 50  # a linear head on cached embeddings: an epoch is milliseconds
    batch_size: int = 64
    lr: float = 1e-2  # a linear probe on standardised features tolerates a large step
    weight_decay: float = 1e-2
    seed: int = 0
    ties: str = "soft"
    min_pairs: int = 20
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("snapshot_url", "out_url", "embedder_uri"):
            if not getattr(self, name):
                raise InvalidRequest(f"{name} is required")
        for name in ("epochs", "batch_size", "min_pairs"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise InvalidRequest(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.ties not in TIES:
            raise InvalidRequest(f"ties must be one of {TIES}, got {self.ties!r}")
