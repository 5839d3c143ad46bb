"""The one scoring interface every reward implements: prompts plus audio or codes in, one float per clip out."""

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from musicrl.errors import InvalidRequest, MusicRLError


MAX_SAMPLE_RATE = 192_000  # above any audio format in use; larger values are a unit mistake


class ClipInput(enum.StrEnum):
    """What a reward reads of a clip."""

    AUDIO = "audio"  # the waveform (with its sample rate)
    CODES = "codes"  # the policy's EnCodec tokens


@dataclass(frozen=True, slots=True)
class ClipBatch:
    """Clips to score. Give ``audio`` with ``sample_rate``, or ``codes``, or both.

    Attributes:
        prompts: B prompts.
        audio: B mono waveforms, float32 [S_b], any length.
        sample_rate: Samples per second of ``audio``.
        codes: B token grids, int64 [K, T_b] (no delay pattern).
    """

    prompts: Sequence[str]
    audio: Sequence[np.ndarray] | None = None
    sample_rate: int | None = None
    codes: Sequence[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InvalidRequest("at least one clip is required")
        if self.audio is None and self.codes is None:
            raise InvalidRequest("give the clips' audio (with its sample rate) or their codes")
        if self.audio is not None:
            _check_audio(self.audio, self.sample_rate, len(self.prompts))
        if self.codes is not None:
            _check_codes(self.codes, len(self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def require(self, what: ClipInput, reward: str) -> None:
        """Raise InvalidRequest unless the batch carries ``what``."""
        if what is ClipInput.AUDIO and self.audio is None:
            raise InvalidRequest(f"the {reward} reward scores audio: send 'audio' with its 'sample_rate'")
        if what is ClipInput.CODES and self.codes is None:
            raise InvalidRequest(f"the {reward} reward scores codes: send 'codes'")


def _check_audio(audio: Sequence[np.ndarray], sample_rate: int | None, rows: int) -> None:
    if len(audio) != rows:
        raise InvalidRequest(f"got {rows} prompts but {len(audio)} clips of audio")
    if sample_rate is None or not 0 < sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidRequest(f"sample_rate must be between 1 and {MAX_SAMPLE_RATE} Hz, got {sample_rate}")
    for index, clip in enumerate(audio):
        if clip.ndim != 1 or clip.size == 0:
            raise InvalidRequest(f"audio[{index}] must be a non-empty mono waveform [S], got shape {clip.shape}")
        if not np.isfinite(clip).all():
            raise InvalidRequest(f"audio[{index}] holds NaN or infinite samples")


def _check_codes(codes: Sequence[np.ndarray], rows: int) -> None:
    if len(codes) != rows:
        raise InvalidRequest(f"got {rows} prompts but {len(codes)} clips of codes")
    for index, grid in enumerate(codes):
        if grid.ndim != 2 or grid.shape[1] == 0:
            raise InvalidRequest(f"codes[{index}] must be [K, T] with T > 0, got shape {grid.shape}")
        if not np.issubdtype(grid.dtype, np.integer):
            raise InvalidRequest(f"codes[{index}] must be integers, got {grid.dtype}")


def check_vocabulary(codes: Sequence[np.ndarray], num_codebooks: int, vocab_size: int) -> None:
    """Raise InvalidRequest unless every grid has ``num_codebooks`` rows of ids in [0, vocab_size)."""
    for index, grid in enumerate(codes):
        if grid.shape[0] != num_codebooks:
            raise InvalidRequest(f"codes[{index}] has {grid.shape[0]} codebooks; this model uses {num_codebooks}")
        low, high = int(grid.min()), int(grid.max())
        if low < 0 or high >= vocab_size:
            raise InvalidRequest(f"codes[{index}] holds ids outside [0, {vocab_size}): {low}..{high}")


@runtime_checkable
class RewardModel(Protocol):
    """A sequence-level reward: one float per clip.

    Attributes:
        name: Its name (``text-adherence``, ``quality``, ``preference``, ...).
        reads: What it scores: the audio or the codes of a clip.
    """

    name: str
    reads: ClipInput

    def score(self, batch: ClipBatch) -> np.ndarray:
        """Scores of the batch's clips, float32 [B]."""
        ...


def finite_scores(scores: np.ndarray | Sequence[float], reward: str) -> np.ndarray:
    """``scores`` as float32 [B], checking that the model produced no NaN (a broken checkpoint)."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if not all(math.isfinite(float(s)) for s in scores):
        raise MusicRLError(f"the {reward} model produced a non-finite score; the checkpoint may be broken")
    return scores
