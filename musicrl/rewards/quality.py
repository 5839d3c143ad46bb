"""The quality reward: a MOS predictor over frozen CLAP audio embeddings, rescaled to [0, 1].

MusicRL (§3.1) trains a model on rater scores of acoustic quality only (1 to 5) and uses its prediction,
rescaled to [0, 1], as a reward; clips longer than its 20 s input are scored on their first and last
20 s and the two scores averaged. Ours keeps that contract with a small regression head over a frozen
CLAP: CLAP already separates clean from noisy, bright from dull audio, and a few thousand ratings are
enough to fit a head but not an audio model.

A checkpoint is a folder (local or fsspec) holding ``model.safetensors`` (the head, with the embedding
statistics it standardises with), ``quality.json`` (head sizes, embedder URI, scoring settings, training
metrics) and ``musicrl.json`` (kind ``reward/quality``, parent = the embedder), written last.
"""

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from musicrl.data.durable import join_url, write_durably  # not dataset: serving needs no pyarrow
from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.checkpoint import CheckpointMetadata, read_metadata
from musicrl.models.clap_loading import ClapBundle, load_clap
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.tiny import seeded_init_
from musicrl.models.uri import ModelURI, Scheme
from musicrl.rewards.base import ClipBatch, ClipInput, finite_scores
from musicrl.rewards.clap_embedding import check_segment_length, embed_segments, mean_by_group, split_segments
from musicrl.rewards.quality_config import DEFAULT_EMBEDDER_URI, QualityConfig


logger = logging.getLogger(__name__)

QUALITY_KIND = "reward/quality"
QUALITY_FILE = "quality.json"
WEIGHTS_FILE = "model.safetensors"
QUALITY_FORMAT = 1  # bump when quality.json or the head's layout changes
MIN_MOS, MAX_MOS = 1.0, 5.0  # the rating scale (QualityRating.score)
TINY_HIDDEN_DIM = 64  # tiny://quality: an untrained head of the default training size


class QualityHead(nn.Module):
    """Standardise a CLAP embedding with the training set's statistics, then regress one MOS value.

    CLAP embeddings are unit vectors whose components vary over a small range; standardising each
    component (as a linear probe would) lets a small head with default step sizes read them.

    Args:
        embedding_dim: D, the CLAP projection width.
        hidden_dim: Width of the hidden layer; 0 for a linear head.
    """

    feature_mean: torch.Tensor  # float32 [D], buffers (saved with the weights)
    feature_scale: torch.Tensor

    def __init__(self, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.register_buffer("feature_mean", torch.zeros(embedding_dim))
        self.register_buffer("feature_scale", torch.ones(embedding_dim))
        self.hidden: nn.Module = (
            nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.GELU()) if hidden_dim else nn.Identity()
        )
        self.output = nn.Linear(hidden_dim or embedding_dim, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Predicted MOS, float [N] (not clipped), of embeddings float [N, D]."""
        standardised = (embeddings - self.feature_mean) / self.feature_scale  # [N, D]
        return self.output(self.hidden(standardised)).squeeze(-1)  # [N]


def mos_to_reward(mos: np.ndarray) -> np.ndarray:
    """``(clip(MOS, 1, 5) - 1) / 4``: the rating scale mapped onto [0, 1]."""
    return (np.clip(mos, MIN_MOS, MAX_MOS) - MIN_MOS) / (MAX_MOS - MIN_MOS)


def clip_windows(audio: np.ndarray, sample_rate: int, window_s: float) -> list[np.ndarray]:
    """The clip itself if it lasts at most ``window_s``, else its first and last ``window_s`` seconds."""
    length = int(round(window_s * sample_rate))
    return [audio] if audio.shape[0] <= length else [audio[:length], audio[-length:]]


def embed_windows(
    bundle: ClapBundle, clips: Sequence[np.ndarray], sample_rate: int, config: QualityConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAP embeddings of every clip's windows: the mean embedding of each window's segments.

    Args:
        bundle: The frozen CLAP.
        clips: C mono waveforms, float [S_c], at ``sample_rate``.
        sample_rate: Their samples per second.
        config: Window and segment lengths, batch size.

    Returns:
        float32 [W, D] window embeddings and int64 [W], the clip of each window (1 or 2 windows per clip).
    """
    windows, clip_of_window = [], []
    for index, clip in enumerate(clips):
        cut = clip_windows(clip, sample_rate, config.window_s)
        windows.extend(cut)
        clip_of_window.extend([index] * len(cut))
    segments, window_of_segment = [], []
    for index, window in enumerate(windows):
        cut = split_segments(window, sample_rate, config.segment_s, config.min_segment_s)
        segments.extend(cut)
        window_of_segment.extend([index] * len(cut))
    embeddings = embed_segments(bundle, segments, sample_rate, config.batch_size)  # [N, D]
    owner = torch.tensor(window_of_segment, device=embeddings.device)  # [N]
    return mean_by_group(embeddings, owner, len(windows)), torch.tensor(clip_of_window)  # [W, D], [W]


class QualityModel:
    """The quality reward: predicted MOS of each clip, rescaled to [0, 1].

    Args:
        embedder: The frozen CLAP whose audio embeddings the head reads.
        head: The regression head (its ``embedding_dim`` matches the embedder's projection width).
        config: How clips are windowed and segmented.
        metadata: The checkpoint's ``musicrl.json``, if it was loaded from one.

    Raises:
        InvalidRequest: ``config.segment_s`` is longer than the audio the embedder takes whole.
        IncompatibleModel: The head's input width differs from the embedder's.
    """

    name = "quality"
    reads = ClipInput.AUDIO

    def __init__(
        self,
        embedder: ClapBundle,
        head: QualityHead,
        config: QualityConfig,
        metadata: CheckpointMetadata | None = None,
    ) -> None:
        check_segment_length(embedder, config.segment_s)
        width = int(embedder.model.config.projection_dim)
        if head.embedding_dim != width:
            raise IncompatibleModel(
                f"the quality head reads {head.embedding_dim}-d embeddings; {embedder.uri} makes {width}"
            )
        self.embedder = embedder
        self.head = head
        self.config = config
        self.metadata = metadata

    @torch.inference_mode()
    def mos_of_windows(self, embeddings: torch.Tensor, clip_of_window: torch.Tensor, num_clips: int) -> torch.Tensor:
        """Per clip, the mean over its windows of the clipped predicted MOS.

        Args:
            embeddings: float32 [W, D] window embeddings (``embed_windows``).
            clip_of_window: int64 [W].
            num_clips: C.

        Returns:
            float32 [C] in [1, 5], on the CPU.
        """
        self.head.eval()
        mos = self.head(embeddings.to(self.embedder.device)).clamp(MIN_MOS, MAX_MOS).cpu()  # [W]
        return mean_by_group(mos, clip_of_window.cpu(), num_clips)  # [C]

    def predict_mos(self, batch: ClipBatch) -> np.ndarray:
        """Predicted MOS of each clip, float32 [B] in [1, 5] (first/last-window average beyond ``window_s``).

        Raises:
            InvalidRequest: The batch carries no audio.
        """
        batch.require(ClipInput.AUDIO, self.name)
        assert batch.audio is not None and batch.sample_rate is not None  # checked by require / ClipBatch
        embeddings, clip_of_window = embed_windows(self.embedder, batch.audio, batch.sample_rate, self.config)
        return self.mos_of_windows(embeddings, clip_of_window, len(batch)).numpy()

    def score(self, batch: ClipBatch) -> np.ndarray:
        """Rewards float32 [B] in [0, 1]: ``(clip(MOS, 1, 5) - 1) / 4``.

        Raises:
            InvalidRequest: The batch carries no audio.
        """
        return finite_scores(mos_to_reward(self.predict_mos(batch)), self.name)


def save_quality(
    model: QualityModel,
    dest: str,
    *,
    metrics: Mapping[str, float] | None = None,
    training_run: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Save the head and its settings under ``dest`` (path or fsspec URL); ``musicrl.json`` is written last.

    Args:
        model: The quality model; its embedder is recorded by URI, not copied.
        dest: The checkpoint folder.
        metrics: Training metrics to record (name → value).
        training_run: Identifier of the run that produced it.
        extra: Free-form fields for ``musicrl.json``.

    Returns:
        ``dest``, usable with :func:`load_quality`.
    """
    embedder_uri = str(model.embedder.uri)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.head.state_dict().items()}
    write_durably(join_url(dest, WEIGHTS_FILE), safetensors.torch.save(state))
    settings = {
        "format": QUALITY_FORMAT,
        "head": {"embedding_dim": model.head.embedding_dim, "hidden_dim": model.head.hidden_dim},
        "embedder_uri": embedder_uri,
        "scoring": dataclasses.asdict(model.config),
        "metrics": dict(metrics or {}),
    }
    write_durably(join_url(dest, QUALITY_FILE), json.dumps(settings, indent=2, sort_keys=True).encode())
    metadata = CheckpointMetadata(
        kind=QUALITY_KIND,
        parent_uri=embedder_uri,
        training_run=training_run,
        metrics=dict(metrics or {}),
        extra=dict(extra or {}),
    )
    write_durably(join_url(dest, "musicrl.json"), json.dumps(metadata.to_wire(), indent=2, sort_keys=True).encode())
    logger.info("saved quality model to %s", dest)
    return dest


def load_quality(uri: str | ModelURI, *, device: str = "cpu") -> QualityModel:
    """Load a quality model by URI.

    Args:
        uri: A checkpoint folder (path, ``file://`` or fsspec URL), or ``tiny://quality?seed=N``: an
            untrained head with seeded weights over ``tiny://clap?seed=0``, for offline runs.
        device: Torch device for the embedder and the head.

    Returns:
        The model, frozen, with its embedder loaded from the URI recorded at training.

    Raises:
        InvalidRequest: Malformed URI or ``tiny://`` parameters.
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: The folder is not a quality checkpoint, or its head does not fit its embedder.
    """
    parsed = uri if isinstance(uri, ModelURI) else ModelURI.parse(uri)
    if parsed.scheme is Scheme.TINY:
        return _tiny_quality(parsed, device)
    directory = resolve_local_dir(parsed)
    metadata = read_metadata(directory)
    if metadata is None or metadata.kind != QUALITY_KIND:
        kind = None if metadata is None else metadata.kind
        raise IncompatibleModel(f"{parsed} is not a quality model (musicrl.json kind {kind!r}, not {QUALITY_KIND!r})")
    try:
        settings = json.loads((directory / QUALITY_FILE).read_text())
        head = QualityHead(int(settings["head"]["embedding_dim"]), int(settings["head"]["hidden_dim"]))
        head.load_state_dict(safetensors.torch.load_file(str(directory / WEIGHTS_FILE)))
        config = QualityConfig(**settings["scoring"])
        embedder_uri = str(settings["embedder_uri"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, RuntimeError, InvalidRequest) as e:
        raise IncompatibleModel(f"{parsed} does not hold a loadable quality checkpoint: {e}") from e
    return QualityModel(load_clap(embedder_uri, device=device), _frozen(head, device), config, metadata)


def _tiny_quality(uri: ModelURI, device: str) -> QualityModel:
    if uri.location != "quality" or set(uri.params) - {"seed"}:
        raise InvalidRequest(f"{uri}: the only tiny quality model is tiny://quality?seed=N")
    try:
        seed = int(uri.params.get("seed", "0"))
    except ValueError as e:
        raise InvalidRequest(f"{uri}: seed must be an integer") from e
    embedder = load_clap(DEFAULT_EMBEDDER_URI, device=device)
    head = QualityHead(int(embedder.model.config.projection_dim), TINY_HIDDEN_DIM)
    seeded_init_(head, seed)
    with torch.no_grad():
        head.output.bias.fill_((MIN_MOS + MAX_MOS) / 2)  # untrained: centred on the scale
    return QualityModel(embedder, _frozen(head, device), QualityConfig())


def _frozen(head: QualityHead, device: str) -> QualityHead:
    head = head.to(torch.device(device)).eval()
    head.requires_grad_(False)
    return head
