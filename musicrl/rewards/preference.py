"""The user-preference reward: a Bradley–Terry model on the policy's own text encoder and decoder.

MusicRL (Cideron et al. 2024, §3.2) scores a clip with a reward r trained on pairwise preferences so that
P(A ≻ B) = σ(r_A − r_B) (Bradley & Terry 1952). Its input is the prompt and the clip's audio tokens, and it
is **initialised from the generator checkpoint**: trained from scratch it stayed at chance, because 300k
pairs are too few to learn music from tokens, while the generator already models them.

Here the generator is MusicGen. The reward model keeps the policy's T5 text encoder and its decoder
transformer, feeds the clip's codes through the decoder exactly as generation lays them out (the delay
pattern of :mod:`musicrl.models.delay`), cross-attending to the prompt's projected and masked text states,
and maps the decoder's last hidden state to one number:

* **pooling**: the mean over the clip's valid positions. A clip-level preference is a judgement of the
  whole clip, and the mean sends gradient to every position; the last position alone would rest the score
  on one token's state of a decoder trained to predict the *next* token, not to summarise;
* **head**: a Linear layer initialised to **zero**, so every pair starts at P = 0.5 and the eval accuracy
  before training is exactly chance, not whatever a random projection of the policy's features happens
  to correlate with;
* **long clips**: a clip longer than the model's window (``window_frames``, at most what the decoder's
  positions cover) is scored as the mean reward of its first and last ``window_frames`` frames, the rule
  MusicRL (§3.1) applies to its quality model's 20 s input. It keeps the end of the clip in the score
  instead of cutting it off, and it is the same in training and in serving: the window is saved with the
  head, so a checkpoint scores clips the way it was trained to.

The policy's EnCodec stays in the model (frozen) to turn audio into codes when a caller sends audio only;
its LM heads stay too (unused). A checkpoint holds the MusicGen and its tokenizer as a ``save_pretrained``
folder under ``backbone/`` (not at the top, so the reward can never be loaded as a policy by mistake), the
head beside it, and ``musicrl.json`` (kind ``reward/preference``, parent = the initial policy), written last.
"""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.audio import resample
from musicrl.models.checkpoint import CheckpointMetadata, read_metadata, save_checkpoint
from musicrl.models.loading import load_musicgen
from musicrl.models.resolver import resolve_local_dir
from musicrl.models.uri import ModelURI, Scheme
from musicrl.rewards.base import ClipBatch, ClipInput, check_vocabulary, finite_scores
from musicrl.rewards.preference_inputs import MAX_PADDING_SHARE, clip_windows, delayed_grid, length_buckets


logger = logging.getLogger(__name__)

PREFERENCE_KIND = "reward/preference"
HEAD_WEIGHTS_FILE = "preference_head.safetensors"
HEAD_CONFIG_FILE = "preference_head.json"
BACKBONE_DIR = "backbone"  # the MusicGen save_pretrained folder inside a checkpoint
POOLING = "mean"  # the only pooling written so far; stored in the checkpoint so a reader can check it
DEFAULT_WINDOW_FRAMES = 1500  # 30 s at 50 frames/s, the clip length MusicGen was trained on
MAX_PROMPT_TOKENS = 256  # as the engine: T5 uses relative positions and music prompts are short


class PreferenceRewardModel(nn.Module):
    """r(prompt, codes): MusicGen's text encoder and decoder, mean-pooled, then a Linear head.

    Args:
        backbone: The composite MusicGen whose text encoder and decoder compute the features.
        tokenizer: Its text tokenizer.
        head: Hidden state [D] → r; None builds a zero-initialised one.
        parent_uri: The policy URI the model was initialised from (for the checkpoint's metadata).
        window_frames: Longer clips score the mean of their first and last window of this many frames;
            capped at what the decoder's positions cover (:attr:`max_frames`).

    Raises:
        InvalidRequest: ``window_frames`` < 1.
    """

    def __init__(
        self,
        backbone: MusicgenForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        head: nn.Linear | None = None,
        parent_uri: str | None = None,
        window_frames: int = DEFAULT_WINDOW_FRAMES,
    ) -> None:
        super().__init__()
        if window_frames < 1:
            raise InvalidRequest(f"window_frames must be >= 1, got {window_frames}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = head if head is not None else _zero_head(int(backbone.config.decoder.hidden_size))
        self.parent_uri = parent_uri
        self.window_frames = min(window_frames, self.max_frames)
        self.max_padding_share = MAX_PADDING_SHARE  # per forward pass (length_buckets); 1.0 is one padded pass
        self._windowed = False  # whether the first long clip was logged

    @classmethod
    def from_policy(
        cls, uri: str, *, device: str = "cpu", window_frames: int = DEFAULT_WINDOW_FRAMES
    ) -> "PreferenceRewardModel":
        """A reward model initialised from the policy checkpoint at ``uri``, with a zero head (untrained).

        Args:
            uri: Any policy URI :func:`~musicrl.models.loading.load_musicgen` reads.
            device: Torch device.
            window_frames: See :class:`PreferenceRewardModel`.

        Returns:
            The model in eval mode, every parameter frozen; call :meth:`set_trainable` to train it.

        Raises:
            ModelNotFound: Nothing at ``uri``.
            IncompatibleModel: ``uri`` is not a mono MusicGen.
        """
        bundle = load_musicgen(uri, device=device)
        model = cls(bundle.model, bundle.tokenizer, parent_uri=str(bundle.uri), window_frames=window_frames)
        model = model.to(device).eval()
        model.requires_grad_(False)
        return model

    @property
    def num_codebooks(self) -> int:
        """K, the number of codebooks per frame."""
        return int(self.backbone.config.decoder.num_codebooks)

    @property
    def vocab_size(self) -> int:
        """V, the size of each codebook."""
        return int(self.backbone.config.decoder.vocab_size)

    @property
    def start_token_id(self) -> int:
        """The decoder's start token, which also fills the delay pattern (as in the engine)."""
        for candidate in (
            self.backbone.generation_config.decoder_start_token_id,
            self.backbone.config.decoder.decoder_start_token_id,
        ):
            if candidate is not None:
                return int(candidate)
        return int(self.backbone.config.decoder.pad_token_id)

    @property
    def max_frames(self) -> int:
        """Longest clip in frames the decoder's positions cover."""
        return int(self.backbone.config.decoder.max_position_embeddings) - self.num_codebooks

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.head.weight.device

    def set_trainable(self, *, text_encoder: bool) -> list[nn.Parameter]:
        """Unfreeze the decoder, the text projection and the head (and the text encoder if asked).

        EnCodec and the LM heads stay frozen: the reward never uses them for its score.

        Args:
            text_encoder: Whether the T5 text encoder trains too.

        Returns:
            The trainable parameters, for the optimiser.
        """
        self.requires_grad_(False)
        parts: list[nn.Module] = [self.backbone.decoder.model.decoder, self.head]
        if getattr(self.backbone, "enc_to_dec_proj", None) is not None:
            parts.append(self.backbone.enc_to_dec_proj)
        if text_encoder:
            parts.append(self.backbone.text_encoder)
        for part in parts:
            part.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "PreferenceRewardModel":
        """Set train mode, keeping frozen parts (EnCodec, a frozen text encoder) in eval mode (no dropout)."""
        super().train(mode)
        self.backbone.audio_encoder.eval()
        if not any(p.requires_grad for p in self.backbone.text_encoder.parameters()):
            self.backbone.text_encoder.eval()
        return self

    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states projected to the decoder width and zeroed at padding, as MusicGen conditions on them.

        Returns:
            ``(states, mask)``: float [B, S, D] and int64 [B, S].
        """
        encoded = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        input_ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        states = self.backbone.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, S, D_t]
        if getattr(self.backbone, "enc_to_dec_proj", None) is not None:
            states = self.backbone.enc_to_dec_proj(states)  # [B, S, D]
        return states * mask[..., None], mask

    def forward(
        self, grid: torch.Tensor, grid_mask: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Rewards of delayed token grids.

        Args:
            grid: Delayed codes, int64 [B, K, L] (see :func:`delayed_grid`).
            grid_mask: Valid positions, bool [B, L].
            text_states: Projected, masked prompt states, float [B, S, D].
            text_mask: Prompt mask, int64 [B, S].

        Returns:
            r, float32 [B].
        """
        batch, num_codebooks, length = grid.shape
        hidden = self.backbone.decoder.model.decoder(
            input_ids=grid.reshape(batch * num_codebooks, length),  # [B * K, L]: the decoder folds K into the batch
            attention_mask=grid_mask.long(),
            encoder_hidden_states=text_states,
            encoder_attention_mask=text_mask,
            use_cache=False,
        ).last_hidden_state  # [B, L, D]
        weights = grid_mask.to(hidden.dtype)[..., None]  # [B, L, 1]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # [B, D]
        return self.head(pooled).squeeze(-1).float()  # [B]

    def score_codes(self, prompts: Sequence[str], codes: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """Rewards of clips given as codes (no delay pattern); differentiable unless called without grad.

        A clip longer than :attr:`window_frames` scores the mean reward of its first and last window (see
        the module docstring); every window of the batch goes through the decoder in one pass.

        Args:
            prompts: B prompts.
            codes: B grids, int64 [K, T_b] of any length T_b ≥ 1; checked against the model's K and V.

        Returns:
            r, float32 [B].

        Raises:
            InvalidRequest: Wrong number of codebooks or ids outside the vocabulary.
        """
        arrays = [np.asarray(c) for c in codes]
        check_vocabulary(arrays, self.num_codebooks, self.vocab_size)
        clips = [torch.as_tensor(a, dtype=torch.long) for a in arrays]
        windows, owner = clip_windows(clips, self.window_frames)  # W windows, owner [W]
        if len(windows) > len(clips):
            self._say_windowing(max(a.shape[-1] for a in arrays))
        parts, order = [], []
        for bucket in length_buckets([w.shape[-1] for w in windows], self.max_padding_share):  # little padding
            grid, grid_mask = delayed_grid([windows[i] for i in bucket], self.start_token_id)
            states, text_mask = self.encode_text([prompts[int(owner[i])] for i in bucket])
            parts.append(self(grid.to(self.device), grid_mask.to(self.device), states, text_mask))  # [n]
            order.extend(bucket)
        rewards = torch.cat(parts)[torch.argsort(torch.tensor(order)).to(self.device)]  # [W], window order
        summed = torch.zeros(len(clips), device=rewards.device).index_add(0, owner.to(rewards.device), rewards)
        return summed / torch.bincount(owner, minlength=len(clips)).to(rewards.device)  # [B]: mean over windows

    def _say_windowing(self, frames: int) -> None:
        if not self._windowed:
            logger.info(
                "a clip of %d frames is longer than the %d-frame window: clips this long score the mean of their "
                "first and last %d frames",
                frames,
                self.window_frames,
                self.window_frames,
            )
            self._windowed = True

    @torch.inference_mode()
    def codes_from_audio(self, audio: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Encode waveforms to the policy's codes with its EnCodec, resampling to its rate first.

        Args:
            audio: B mono waveforms, float32 [S_b].
            sample_rate: Samples per second of ``audio``.

        Returns:
            B grids, int64 [K, T_b].
        """
        target = int(self.backbone.config.audio_encoder.sampling_rate)
        encoder = self.backbone.audio_encoder
        out = []
        for clip in audio:
            wave = resample(clip, sample_rate, target)
            values = torch.from_numpy(wave).to(self.device, encoder.dtype)[None, None]  # [1, 1, S]
            codes = encoder.encode(values).audio_codes  # [1 chunk, 1, K, T]
            out.append(codes[0, 0].cpu().numpy().astype(np.int64))
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the MusicGen and its tokenizer (``backbone/``) and the head into a local ``directory``."""
        directory = Path(directory)
        self.backbone.save_pretrained(directory / BACKBONE_DIR)
        self.tokenizer.save_pretrained(directory / BACKBONE_DIR)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
            directory / HEAD_WEIGHTS_FILE,
        )
        config = {"hidden_size": self.head.in_features, "pooling": POOLING, "window_frames": self.window_frames}
        (directory / HEAD_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def save(self, dest: str, metrics: dict[str, float], *, training_run: str | None = None) -> str:
        """Save a complete checkpoint (backbone, head, tokenizer, ``musicrl.json``) to a path or fsspec URL.

        Args:
            dest: Where to save.
            metrics: Final metrics recorded in ``musicrl.json``.
            training_run: Identifier of the run that trained it.

        Returns:
            ``dest``, usable as a URI for :func:`load_preference`.
        """
        metadata = CheckpointMetadata(
            kind=PREFERENCE_KIND,
            parent_uri=self.parent_uri,
            training_run=training_run,
            metrics=metrics,
            extra={"pooling": POOLING},
        )
        return save_checkpoint(self, None, dest, metadata)  # the tokenizer goes with the backbone


def _zero_head(hidden_size: int) -> nn.Linear:
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def load_preference(uri: str, *, device: str = "cpu") -> PreferenceRewardModel:
    """Load a trained preference reward model.

    A ``tiny://musicgen?seed=N`` URI gives an *untrained* model initialised from that tiny policy (every
    score 0), for tests and the offline local run.

    Args:
        uri: A checkpoint path, ``file://`` or fsspec URL (``s3://…``), or a ``tiny://`` policy.
        device: Torch device.

    Returns:
        The model in eval mode, every parameter frozen.

    Raises:
        ModelNotFound: Nothing at the URI.
        IncompatibleModel: The checkpoint is not a ``reward/preference`` checkpoint.
    """
    parsed = ModelURI.parse(uri)
    if parsed.scheme is Scheme.TINY:
        logger.warning("%s is a policy, not a trained reward: every preference score will be 0", uri)
        return PreferenceRewardModel.from_policy(uri, device=device)
    directory = resolve_local_dir(parsed)
    metadata = _check_preference_dir(directory, parsed)
    head, window_frames = _load_head(directory, parsed)
    bundle = load_musicgen(str(directory / BACKBONE_DIR), device=device)
    model = PreferenceRewardModel(
        bundle.model, bundle.tokenizer, head, parent_uri=metadata.parent_uri, window_frames=window_frames
    )
    model = model.to(device).eval()
    model.requires_grad_(False)
    logger.info("loaded preference reward %s", uri)
    return model


def _check_preference_dir(directory: Path, uri: ModelURI) -> CheckpointMetadata:
    try:
        metadata = read_metadata(directory)
    except (json.JSONDecodeError, InvalidRequest) as e:
        raise IncompatibleModel(f"{uri} has an unreadable musicrl.json: {e}") from e
    kind = metadata.kind if metadata is not None else None
    if metadata is None or kind != PREFERENCE_KIND:
        raise IncompatibleModel(
            f"{uri} is a {kind!r} checkpoint, not {PREFERENCE_KIND!r}; train one with train_preference "
            "(or build an untrained one from a policy with PreferenceRewardModel.from_policy)"
        )
    needed = (HEAD_WEIGHTS_FILE, HEAD_CONFIG_FILE, f"{BACKBONE_DIR}/config.json")
    missing = [name for name in needed if not (directory / name).exists()]
    if missing:
        raise IncompatibleModel(f"{uri} lacks {', '.join(missing)}: the checkpoint is incomplete")
    return metadata


def _load_head(directory: Path, uri: ModelURI) -> tuple[nn.Linear, int]:
    """The head and the window it was trained with (a head saved before windows existed: the default)."""
    try:
        config = json.loads((directory / HEAD_CONFIG_FILE).read_text())
        head = nn.Linear(int(config["hidden_size"]), 1)
        head.load_state_dict(load_file(directory / HEAD_WEIGHTS_FILE))
        window_frames = int(config.get("window_frames", DEFAULT_WINDOW_FRAMES))
    except (OSError, json.JSONDecodeError, KeyError, ValueError, RuntimeError) as e:
        raise IncompatibleModel(f"{uri} holds an unreadable preference head: {e}") from e
    if config.get("pooling") != POOLING:
        raise IncompatibleModel(f"{uri} pools with {config.get('pooling')!r}; this version reads {POOLING!r}")
    return head, window_frames


class PreferenceReward:
    """The ``preference`` reward: the Bradley–Terry logit r of each clip, float32.

    Reads codes; a batch with audio only is encoded to codes with the policy's EnCodec first.

    Args:
        model: The trained reward model.
        batch_size: Clips scored per forward pass.
    """

    name = "preference"
    reads = ClipInput.CODES

    def __init__(self, model: PreferenceRewardModel, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise InvalidRequest(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @classmethod
    def from_uri(cls, uri: str, *, device: str = "cpu", batch_size: int = 16) -> "PreferenceReward":
        """Load the reward model at ``uri`` (see :func:`load_preference`) and wrap it."""
        return cls(load_preference(uri, device=device), batch_size=batch_size)

    def score(self, batch: ClipBatch) -> np.ndarray:
        """Scores r of the batch's clips, float32 [B].

        Raises:
            InvalidRequest: Codes of the wrong shape or out of vocabulary.
        """
        codes = batch.codes
        if codes is None:
            batch.require(ClipInput.AUDIO, self.name)
            assert batch.sample_rate is not None and batch.audio is not None  # checked by ClipBatch
            codes = self.model.codes_from_audio(batch.audio, batch.sample_rate)
        check_vocabulary(codes, self.model.num_codebooks, self.model.vocab_size)
        scores = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                stop = start + self.batch_size
                scores.append(self.model.score_codes(batch.prompts[start:stop], codes[start:stop]).cpu())
        return finite_scores(torch.cat(scores).numpy(), self.name)
