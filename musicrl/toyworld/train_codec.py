"""Train the toy EnCodec: transformers' ``EncodecModel`` at MusicGen's frame rate, on the toy world's clips.

50 frames/s and 4 residual codebooks, as ``facebook/encodec_32khz``, so the toy MusicGen that sits on top of
it has the production frame rate and delay pattern; at the world's 16 kHz that is a 320-sample hop.
transformers ships EnCodec for inference only; training it needs the residual vector quantiser's learning
rule, which is here (:class:`ResidualQuantizerTrainer`): codebooks updated as exponential moving averages of
their assigned vectors (k-means online, as EnCodec and SoundStream do), a straight-through gradient to the
encoder, a commitment loss, and dead codes re-seeded from the batch. The loss is a multi-scale mel distance
(:mod:`musicrl.toyworld.mel_loss`) plus a waveform L1 term, as EnCodec's; there is no adversary, which two
cores could not afford. Trained from scratch, a waveform autoencoder first sits on a plateau where it emits
silence; the toy world's recipe of each frame gets it off (:mod:`musicrl.toyworld.codec_curriculum`).
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import EncodecConfig, EncodecModel

from musicrl.toyworld.codec_curriculum import FEATURES, frame_features
from musicrl.toyworld.corpus import examples
from musicrl.toyworld.mel_loss import MultiScaleMelLoss
from musicrl.toyworld.world import SAMPLE_RATE


logger = logging.getLogger(__name__)

HOP = SAMPLE_RATE // 50  # samples per frame: 50 frames/s, as MusicGen
RATIOS = [8, 5, 4, 2]  # the decoder's up-sampling stages: their product is the hop
NUM_CODEBOOKS = 4
RESEED_EVERY = 25  # steps between re-seeding dead codes


@dataclass(frozen=True, slots=True)
class CodecTrainConfig:
    """How the toy codec is trained (the three stages are in :mod:`musicrl.toyworld.codec_curriculum`).

    Attributes:
        seed: Fixes the corpus, the crops and the initial weights.
        clips: Training clips in the pool (train split of the clean corpus).
        decoder_steps: Stage 1: the decoder renders frames from their recipe.
        encoder_steps: Stage 2: the encoder recovers the recipe from the audio.
        steps: Stage 3: the whole codec, quantiser included, on reconstruction alone.
        batch_size: Crops per step.
        crop_frames: Frames per crop (``crop_frames * HOP`` samples, starting on a frame boundary).
        learning_rate: Adam's step size; stage 3 decays it linearly to a tenth over its last ``decay_share``.
        waveform_weight: Weight of the waveform L1 term beside the mel distance.
        num_filters: Width of the first convolution; each of the 4 down-sampling stages doubles it.
        codebook_size: Entries per codebook: the toy MusicGen's vocabulary.
        latent_dim: Width of the quantised latent.
        commitment: Weight of the encoder's pull towards its quantised latent.
        ema_decay: Codebook moving-average decay.
        threads: Torch intra-op threads (determinism needs a fixed count).
    """

    seed: int = 0
    clips: int = 1_000
    decoder_steps: int = 1_000  # left the silent plateau by step 100; rendered pitch right 80% of the time by 400
    encoder_steps: int = 300
    steps: int = 1_000  # 500 (after 500 and 200) kept pitch 63%, tempo 80%, timbre 100%, loudness 80%
    batch_size: int = 16
    crop_frames: int = 16  # 0.32 s: the decoder's receptive field is a few frames; short crops are cheap
    learning_rate: float = 3e-3
    decay_share: float = 0.5
    waveform_weight: float = 1.0
    num_filters: int = 16
    codebook_size: int = 256
    latent_dim: int = 32
    commitment: float = 0.5
    ema_decay: float = 0.9  # short training: codebooks must follow a moving encoder quickly
    threads: int = 2

    def __post_init__(self) -> None:
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"codebook_size={self.codebook_size} must be a power of two (whole bits per code)")
        if min(self.clips, self.steps, self.batch_size, self.crop_frames, self.threads) < 1:
            raise ValueError("clips, steps, batch_size, crop_frames and threads must be positive")
        if min(self.decoder_steps, self.encoder_steps) < 0:
            raise ValueError("decoder_steps and encoder_steps must be >= 0")
        if self.latent_dim < FEATURES:
            raise ValueError(f"latent_dim={self.latent_dim} must hold the curriculum's {FEATURES} features")


def codec_config(config: CodecTrainConfig) -> EncodecConfig:
    """EnCodec at 32 kHz with 4 codebooks of ``codebook_size`` entries (the bandwidth that selects all 4)."""
    bits = int(math.log2(config.codebook_size))
    return EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        num_filters=config.num_filters,
        num_residual_layers=1,
        upsampling_ratios=RATIOS,
        codebook_size=config.codebook_size,
        codebook_dim=config.latent_dim,
        hidden_size=config.latent_dim,
        num_lstm_layers=1,
        target_bandwidths=[NUM_CODEBOOKS * 50 * bits / 1000],
        normalize=False,
    )


class ResidualQuantizerTrainer:
    """The learning rule of EnCodec's residual vector quantiser, applied to transformers' codebook buffers.

    Args:
        model: The codec whose ``quantizer.layers[i].codebook.embed`` it trains.
        decay: Moving-average decay of the codebooks.
        generator: Draws the vectors that seed new and dead codes.
    """

    def __init__(self, model: EncodecModel, decay: float, generator: torch.Generator) -> None:
        self.codebooks = [layer.codebook for layer in model.quantizer.layers]
        self.decay = decay
        self.generator = generator
        size, dim = self.codebooks[0].embed.shape
        self.usage = [torch.zeros(size) for _ in self.codebooks]
        self.sums = [torch.zeros(size, dim) for _ in self.codebooks]
        self.started = False
        self.updates = 0

    def __call__(self, latent: torch.Tensor, *, learn: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise ``latent`` [B, D, T]; return the straight-through latent and the commitment loss."""
        vectors = latent.detach().permute(0, 2, 1).reshape(-1, latent.shape[1])  # [N, D]
        residual, quantised = vectors, torch.zeros_like(vectors)
        for index, codebook in enumerate(self.codebooks):
            if learn and not self.started:
                codebook.embed.copy_(self._pick(residual, codebook.embed.shape[0]))
            codes = codebook.quantize(residual)  # [N]
            if learn:
                self._update(index, residual, codes)
            chosen = codebook.embed[codes]
            quantised, residual = quantised + chosen, residual - chosen
        self.started = self.started or learn
        quantised = quantised.reshape(latent.shape[0], latent.shape[2], -1).permute(0, 2, 1)  # [B, D, T]
        commitment = torch.mean((latent - quantised) ** 2)
        return latent + (quantised - latent).detach(), commitment

    def codes_in_use(self) -> float:
        """Mean over codebooks of the codes with recent use: a collapsing codebook shows here first."""
        return float(np.mean([int((usage > 0.05).sum()) for usage in self.usage]))

    def _pick(self, vectors: torch.Tensor, count: int) -> torch.Tensor:
        index = torch.randint(len(vectors), (count,), generator=self.generator)
        return vectors[index]

    def _update(self, index: int, residual: torch.Tensor, codes: torch.Tensor) -> None:
        codebook = self.codebooks[index]
        size = codebook.embed.shape[0]
        counts = torch.bincount(codes, minlength=size).float()
        sums = torch.zeros_like(self.sums[index]).index_add_(0, codes, residual)
        self.usage[index].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums[index].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        smoothed = (self.usage[index] + 1e-5) / (self.usage[index].sum() + size * 1e-5) * self.usage[index].sum()
        embed = self.sums[index] / smoothed[:, None]
        self.updates += 1
        # A code used by under a twentieth of a vector per step lately is re-seeded, but only now and then:
        # re-seeding every step would let the codebook memorise the current batch instead of the data.
        dead = self.usage[index] < 0.05
        if self.updates % (RESEED_EVERY * len(self.codebooks)) < len(self.codebooks) and dead.any():
            fresh = self._pick(residual, int(dead.sum()))
            embed[dead] = fresh
            self.sums[index][dead] = fresh
            self.usage[index][dead] = 1.0
        codebook.embed.copy_(embed)
        codebook.embed_avg.copy_(embed)  # transformers' buffer; kept equal so a saved codec is consistent


@dataclass(frozen=True, slots=True)
class _Pool:
    audio: torch.Tensor  # float32 [N, samples]
    features: torch.Tensor  # float32 [N, latent_dim, frames]: each frame's recipe

    def crops(self, count: int, frames: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio [B, frames * HOP] and features [B, D, frames] of ``count`` frame-aligned crops."""
        rows = torch.randint(len(self.audio), (count,), generator=generator)
        starts = torch.randint(self.features.shape[-1] - frames + 1, (count,), generator=generator)
        pairs = list(zip(rows.tolist(), starts.tolist(), strict=True))
        audio = torch.stack([self.audio[r, s * HOP : (s + frames) * HOP] for r, s in pairs])
        return audio, torch.stack([self.features[r, :, s : s + frames] for r, s in pairs])


def _pool(config: CodecTrainConfig) -> _Pool:
    chosen = list(tqdm(examples(config.seed, config.clips, split="train"), total=config.clips, desc="clips"))
    audio = np.stack([e.audio for e in chosen])
    features = np.stack([frame_features(e.clip.piece, e.audio, config.latent_dim) for e in chosen])
    return _Pool(torch.from_numpy(audio), torch.from_numpy(features))


def train_codec(config: CodecTrainConfig) -> tuple[EncodecModel, list[dict[str, Any]]]:
    """Train a codec through the three stages; return it (eval mode) and one metrics record per logged step."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    model = EncodecModel(codec_config(config)).train()
    pool = _pool(config)
    history: list[dict[str, Any]] = []
    stages = (("decoder", config.decoder_steps), ("encoder", config.encoder_steps), ("codec", config.steps))
    quantizer = ResidualQuantizerTrainer(model, config.ema_decay, generator)
    offset = 0
    for stage, steps in stages:
        step = _stage(stage, steps, model, quantizer, pool, config, generator)
        history += [{**row, "step": row["step"] + offset, "stage": stage} for row in step]
        offset += steps
    return model.eval(), history


def _stage(
    stage: str,
    steps: int,
    model: EncodecModel,
    quantizer: "ResidualQuantizerTrainer",
    pool: _Pool,
    config: CodecTrainConfig,
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    trained = {"decoder": model.decoder, "encoder": model.encoder, "codec": model}[stage]
    optimizer = torch.optim.Adam(trained.parameters(), lr=config.learning_rate, betas=(0.5, 0.9))
    decay_from = int(steps * (1 - config.decay_share)) if stage == "codec" else steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 - 0.9 * max(0, step - decay_from) / max(1, steps - decay_from)
    )
    loss_fn = MultiScaleMelLoss()
    weights = {"features": 1.0, "mel": 1.0, "waveform": config.waveform_weight, "commitment": config.commitment}
    history: list[dict[str, Any]] = []
    progress = tqdm(range(steps), desc=f"codec: {stage}")
    for step in progress:
        audio, recipe = pool.crops(config.batch_size, config.crop_frames, generator)
        if stage == "encoder":
            losses = {"features": torch.mean((model.encoder(audio[:, None]) - recipe) ** 2)}
        else:
            latent, commitment = recipe, recipe.new_zeros(())
            if stage == "codec":
                latent, commitment = quantizer(model.encoder(audio[:, None]), learn=True)
            reconstruction = model.decoder(latent)[:, 0, : audio.shape[1]]
            losses = {
                "mel": loss_fn(reconstruction, audio),
                "waveform": (reconstruction - audio).abs().mean() / (audio.abs().mean() + 1e-8),
                "commitment": commitment,
            }
        loss = sum((weights[name] * value for name, value in losses.items()), torch.zeros(()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        if step % 10 == 0 or step == steps - 1:
            row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
            if stage == "codec":
                row["codes_used"] = quantizer.codes_in_use()
            history.append(row)
            progress.set_postfix(loss=f"{row['loss']:.3f}")
    return history


@torch.no_grad()
def encode(model: EncodecModel, audio: np.ndarray) -> torch.Tensor:
    """Codes int64 [B, 4, T] of float audio [B, samples], through transformers' own ``encode``."""
    batch = torch.from_numpy(np.asarray(audio, dtype=np.float32))[:, None]
    bandwidth = model.config.target_bandwidths[-1]
    return model.encode(batch, bandwidth=bandwidth).audio_codes[0]


@torch.no_grad()
def decode(model: EncodecModel, codes: torch.Tensor) -> np.ndarray:
    """Audio float32 [B, samples] of codes [B, 4, T], through transformers' own ``decode``."""
    return model.decode(codes[None], audio_scales=[None]).audio_values[:, 0].numpy()
