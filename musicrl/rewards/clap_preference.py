"""A cheap preference baseline: a Bradley–Terry head over frozen CLAP text and audio embeddings.

The reward MusicRL uses (:mod:`musicrl.rewards.preference`) finetunes the generator's decoder on the
pairs, which needs a GPU at MusicGen's sizes. This baseline trains a linear head in seconds on a CPU, so a
team can see whether a snapshot carries any signal before paying for the real one, and can report how
much the generator initialisation adds over generic audio features (Cideron et al. 2024, §3.2 train the
same Bradley–Terry objective, P(A ≻ B) = σ(r_A − r_B)).

    r(prompt, clip) = w · standardise([a, a ⊙ t]) + b

with ``a`` the clip's unit CLAP audio embedding (mean over 10 s segments) and ``t`` the prompt's: the
first half reads the audio alone (quality, style), the second how its dimensions agree with the prompt.
The head starts at zero (every pair at P = 0.5). Embeddings are computed once per clip and prompt.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch
from torch import nn

from musicrl.data.durable import join_url, write_durably  # not dataset: serving needs no pyarrow
from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.checkpoint import CheckpointMetadata, read_metadata
from musicrl.models.clap_loading import ClapBundle, load_clap
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.uri import ModelURI
from musicrl.rewards.base import ClipBatch, ClipInput, finite_scores
from musicrl.rewards.clap_embedding import embed_segments, embed_texts, mean_by_group, split_segments
from musicrl.rewards.preference_config import ClapPreferenceTrainConfig
from musicrl.rewards.preference_data import PreferencePairs, read_pairs
from musicrl.rewards.train_preference import bt_loss, pair_accuracy
from musicrl.rewards.train_quality import read_clip_audio


logger = logging.getLogger(__name__)

CLAP_PREFERENCE_KIND = "reward/clap-preference"
SETTINGS_FILE = "clap_preference.json"
WEIGHTS_FILE = "model.safetensors"
SEGMENT_S = 10.0  # CLAP embeds 10 s at a time; the paper averages its MuLan scores over 10 s segments
MIN_SEGMENT_S = 1.0  # shorter tails are mostly padding once CLAP repeats them to 10 s


class ClapPreferenceHead(nn.Module):
    """r = w · standardise([a, a ⊙ t]) + b over unit CLAP embeddings, zero-initialised.

    Args:
        embedding_dim: D, the CLAP projection width.
    """

    feature_mean: torch.Tensor  # float32 [2D], buffers saved with the weights
    feature_scale: torch.Tensor

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.register_buffer("feature_mean", torch.zeros(2 * embedding_dim))
        self.register_buffer("feature_scale", torch.ones(2 * embedding_dim))
        self.linear = nn.Linear(2 * embedding_dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @staticmethod
    def features(text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Raw features [N, 2D] of text and audio embeddings, each float32 [N, D]."""
        return torch.cat([audio, audio * text], dim=-1)  # [N, 2D]

    def forward(self, text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """r, float32 [N], of text and audio embeddings float32 [N, D]."""
        standardised = (self.features(text, audio) - self.feature_mean) / self.feature_scale  # [N, 2D]
        return self.linear(standardised).squeeze(-1)  # [N]


def embed_clips(
    bundle: ClapBundle, audio: Sequence[np.ndarray], sample_rate: int, batch_size: int = 16
) -> torch.Tensor:
    """Unit CLAP embeddings of clips, each the mean over its 10 s segments: float32 [N, D]."""
    segments, owner = [], []
    for index, clip in enumerate(audio):
        cut = split_segments(np.asarray(clip, dtype=np.float32), sample_rate, SEGMENT_S, MIN_SEGMENT_S)
        segments.extend(cut)
        owner.extend([index] * len(cut))
    embeddings = embed_segments(bundle, segments, sample_rate, batch_size)  # [S, D]
    return mean_by_group(embeddings, torch.tensor(owner, device=embeddings.device), len(audio))  # [N, D]


class ClapPreferenceReward:
    """The baseline ``preference`` reward: the BT logit r of each clip, float32, from its audio.

    Args:
        embedder: The frozen CLAP.
        head: The trained head.
    """

    name = "preference"
    reads = ClipInput.AUDIO

    def __init__(self, embedder: ClapBundle, head: ClapPreferenceHead) -> None:
        width = int(embedder.model.config.projection_dim)
        if head.embedding_dim != width:
            raise IncompatibleModel(f"the head reads {head.embedding_dim}-d embeddings; {embedder.uri} makes {width}")
        self.embedder = embedder
        self.head = head

    @torch.inference_mode()
    def score(self, batch: ClipBatch) -> np.ndarray:
        """Scores r float32 [B]. Raises InvalidRequest when the batch carries no audio."""
        batch.require(ClipInput.AUDIO, self.name)
        assert batch.audio is not None and batch.sample_rate is not None  # checked by require / ClipBatch
        audio = embed_clips(self.embedder, batch.audio, batch.sample_rate)  # [B, D]
        text = embed_texts(self.embedder, batch.prompts)  # [B, D]
        return finite_scores(self.head.eval()(text, audio).cpu().numpy(), self.name)


@dataclass(frozen=True, slots=True)
class _Embedded:
    """A split's pairs as embedding rows: text [N, D], audio A and B [N, D], labels [N]."""

    text: torch.Tensor
    audio_a: torch.Tensor
    audio_b: torch.Tensor
    labels: torch.Tensor


def _embed_pairs(pairs: PreferencePairs, bundle: ClapBundle) -> _Embedded:
    uris = sorted(set(pairs.audio_a + pairs.audio_b))
    clips = [embed_clips(bundle, [audio], rate)[0] for audio, rate in (read_clip_audio(u, u) for u in uris)]
    row = {uri: i for i, uri in enumerate(uris)}
    audio = torch.stack(clips).cpu()  # [C, D]
    prompts = sorted(set(pairs.prompts))
    text = embed_texts(bundle, prompts).cpu()  # [P, D]
    prompt_row = {p: i for i, p in enumerate(prompts)}
    return _Embedded(
        text=text[[prompt_row[p] for p in pairs.prompts]],  # [N, D]
        audio_a=audio[[row[u] for u in pairs.audio_a]],  # [N, D]
        audio_b=audio[[row[u] for u in pairs.audio_b]],  # [N, D]
        labels=torch.from_numpy(pairs.labels),
    )


def _margin(head: ClapPreferenceHead, data: _Embedded, index: slice | torch.Tensor) -> torch.Tensor:
    return head(data.text[index], data.audio_a[index]) - head(data.text[index], data.audio_b[index])  # [N]


def train_clap_preference(config: ClapPreferenceTrainConfig) -> tuple[str, dict[str, float]]:
    """Train the baseline head on the snapshot's pairs and save it.

    Returns:
        The checkpoint URI and its final metrics (``test/accuracy``, ``test/loss``, ``train/loss``): a fixed
        number of epochs chooses nothing, so the baseline needs no validation split and reports on ``test``.

    Raises:
        InvalidRequest: Missing snapshot files or audio, or fewer than ``min_pairs`` usable training pairs.
    """
    train_pairs = read_pairs(config.snapshot_url, "train", ties=config.ties)
    if len(train_pairs) < config.min_pairs:
        raise InvalidRequest(
            f"the snapshot {config.snapshot_url} has {len(train_pairs)} usable training pairs; "
            f"at least min_pairs={config.min_pairs} are needed"
        )
    bundle = load_clap(config.embedder_uri, device=config.device)
    train = _embed_pairs(train_pairs, bundle)
    evaluation = _embed_pairs(read_pairs(config.snapshot_url, "test", ties=config.ties), bundle)
    head = ClapPreferenceHead(int(bundle.model.config.projection_dim))
    features = head.features(torch.cat([train.text, train.text]), torch.cat([train.audio_a, train.audio_b]))
    head.feature_mean.copy_(features.mean(dim=0))
    head.feature_scale.copy_(features.std(dim=0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        for index in torch.randperm(len(train.labels), generator=generator).split(config.batch_size):
            loss = bt_loss(_margin(head, train, index), train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    metrics = _metrics(head, train, evaluation)
    logger.info(
        "CLAP preference baseline: test accuracy %.3f on %d pairs", metrics["test/accuracy"], len(evaluation.labels)
    )
    return save_clap_preference(head, str(bundle.uri), config.out_url, metrics), metrics


@torch.no_grad()
def _metrics(head: ClapPreferenceHead, train: _Embedded, evaluation: _Embedded) -> dict[str, float]:
    metrics = {"train/loss": float(bt_loss(_margin(head, train, slice(None)), train.labels))}
    if len(evaluation.labels):
        margin = _margin(head, evaluation, slice(None))
        metrics["test/loss"] = float(bt_loss(margin, evaluation.labels))
        metrics["test/accuracy"] = pair_accuracy(margin.numpy(), evaluation.labels.numpy())
    return metrics


def save_clap_preference(head: ClapPreferenceHead, embedder_uri: str, dest: str, metrics: dict[str, float]) -> str:
    """Save the head (``model.safetensors``), its settings and ``musicrl.json`` (last) under ``dest``."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}
    write_durably(join_url(dest, WEIGHTS_FILE), safetensors.torch.save(state))
    settings = {"embedding_dim": head.embedding_dim, "embedder_uri": embedder_uri}
    write_durably(join_url(dest, SETTINGS_FILE), json.dumps(settings, indent=2, sort_keys=True).encode())
    metadata = CheckpointMetadata(kind=CLAP_PREFERENCE_KIND, parent_uri=embedder_uri, metrics=metrics)
    write_durably(join_url(dest, "musicrl.json"), json.dumps(metadata.to_wire(), indent=2, sort_keys=True).encode())
    return dest


def load_clap_preference(uri: str, *, device: str = "cpu") -> ClapPreferenceReward:
    """Load a baseline saved by :func:`train_clap_preference` (path, ``file://`` or fsspec URL).

    Raises:
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: Not a ``reward/clap-preference`` checkpoint, or an unreadable one.
    """
    directory = resolve_local_dir(ModelURI.parse(uri))
    metadata = read_metadata(directory)
    if metadata is None or metadata.kind != CLAP_PREFERENCE_KIND:
        kind = None if metadata is None else metadata.kind
        raise IncompatibleModel(f"{uri} is a {kind!r} checkpoint, not {CLAP_PREFERENCE_KIND!r}")
    try:
        settings = json.loads((directory / SETTINGS_FILE).read_text())
        head = ClapPreferenceHead(int(settings["embedding_dim"]))
        head.load_state_dict(safetensors.torch.load_file(str(directory / WEIGHTS_FILE)))
    except (OSError, json.JSONDecodeError, KeyError, RuntimeError) as e:
        raise IncompatibleModel(f"{uri} does not hold a loadable CLAP preference checkpoint: {e}") from e
    head = head.to(torch.device(device)).eval().requires_grad_(False)
    return ClapPreferenceReward(load_clap(str(settings["embedder_uri"]), device=device), head)
