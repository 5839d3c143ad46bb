"""Train the toy MusicGen: transformers' ``MusicgenForConditionalGeneration`` on the toy codec's codes.

The composite is the production one (T5 text encoder, decoder over 4 delayed codebooks, EnCodec), at a
size two cores train in minutes, so the platform's loader, engine, rewards and RL trainer run on it
unchanged. Training is next-token cross-entropy on the delayed grid, with the prompt dropped (zero states
under a zero mask, as the engine's unconditional rows) for a share of the rows, so that classifier-free
guidance has an unconditional model to push away from. The conditioning and the delay pattern are the
platform's own (:mod:`musicrl.models.conditioning`, :mod:`musicrl.models.delay`): what is trained here is
what the engine samples.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import (
    EncodecModel,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from musicrl.models.conditioning import encode_prompts, unconditional
from musicrl.models.delay import delay, window_mask
from musicrl.rl.policy import decoder_pass
from musicrl.toyworld.corpus import examples
from musicrl.toyworld.tokenizer import t5_word_tokenizer
from musicrl.toyworld.train_codec import encode


MAX_PROMPT_TOKENS = 32  # the longest toy caption is under 20 words


@dataclass(frozen=True, slots=True)
class PolicyTrainConfig:
    """How the toy MusicGen is trained.

    Attributes:
        seed: Fixes the corpus order, the prompt dropout and the initial weights.
        clips: Training clips (train split of the clean corpus, after the codec's).
        steps: Optimiser steps.
        batch_size: Clips per step.
        learning_rate: AdamW's peak step size, after a short warm-up, then cosine decay to a tenth.
        warmup_steps: Linear warm-up.
        prompt_dropout: Share of rows trained without their prompt (for classifier-free guidance).
        hidden_size: Decoder width.
        layers: Decoder layers.
        heads: Decoder attention heads.
        text_hidden_size: T5 width.
        threads: Torch intra-op threads (determinism needs a fixed count).
    """

    seed: int = 0
    clips: int = 3_000
    steps: int = 2_400  # at 1,200 timbre was heard in 75% of held-out asks and tempo in 30%; at 2,400, 85% and 53%
    batch_size: int = 24
    learning_rate: float = 2e-3
    warmup_steps: int = 60
    prompt_dropout: float = 0.15  # MusicGen trains with 10–20% unconditional rows
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    text_hidden_size: int = 64
    threads: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of heads={self.heads}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout={self.prompt_dropout} must lie in [0, 1)")
        if min(self.clips, self.steps, self.batch_size, self.threads) < 1:
            raise ValueError("clips, steps, batch_size and threads must be positive")


def policy_config(
    config: PolicyTrainConfig, codec: EncodecModel, tokenizer: PreTrainedTokenizerFast
) -> MusicgenConfig:
    """The composite config: a T5 over the toy vocabulary, the trained codec, a small decoder over its codes."""
    special = codec.config.codebook_size  # MusicGen uses id == vocabulary size for pad and decoder start
    text = T5Config(
        vocab_size=len(tokenizer),
        d_model=config.text_hidden_size,
        d_kv=config.text_hidden_size // 2,
        d_ff=2 * config.text_hidden_size,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,  # short training on clean data: dropout only slows it
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codec.config.codebook_size,
        max_position_embeddings=2048,  # 40 s at 50 frames/s, as MusicGen
        num_hidden_layers=config.layers,
        ffn_dim=4 * config.hidden_size,
        num_attention_heads=config.heads,
        hidden_size=config.hidden_size,
        num_codebooks=codec.config.num_quantizers,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=special,
        bos_token_id=special,
        decoder_start_token_id=special,
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=codec.config, decoder=decoder)


def build_policy(
    config: PolicyTrainConfig, codec: EncodecModel
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerFast]:
    """A fresh MusicGen around the trained codec, with sampling defaults the toy world suits."""
    torch.manual_seed(config.seed)
    tokenizer = t5_word_tokenizer(MAX_PROMPT_TOKENS)
    model = MusicgenForConditionalGeneration(policy_config(config, codec, tokenizer))
    model.audio_encoder.load_state_dict(codec.state_dict())
    special = codec.config.codebook_size
    generation = model.generation_config
    generation.pad_token_id = generation.decoder_start_token_id = generation.bos_token_id = special
    generation.do_sample, generation.guidance_scale, generation.top_k = True, 3.0, 50
    generation.max_length = 1500  # 30 s, as the released MusicGen checkpoints
    return model, tokenizer


def training_set(config: PolicyTrainConfig, codec: EncodecModel, start: int) -> tuple[list[str], torch.Tensor]:
    """Captions and codes int64 [N, K, T] of ``config.clips`` training clips from corpus index ``start``."""
    captions, codes = [], []
    batch: list[np.ndarray] = []
    for example in tqdm(examples(config.seed, config.clips, "train", start), total=config.clips, desc="encode"):
        captions.append(example.caption.text)
        batch.append(example.audio)
        if len(batch) == 64:
            codes.append(encode(codec, np.stack(batch)))
            batch = []
    if batch:
        codes.append(encode(codec, np.stack(batch)))
    return captions, torch.cat(codes)


def train_policy(
    config: PolicyTrainConfig, codec: EncodecModel, captions: list[str], codes: torch.Tensor
) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerFast, list[dict[str, Any]]]:
    """Train a MusicGen on (caption, codes) pairs; return it (eval mode), its tokenizer and the history."""
    torch.set_num_threads(config.threads)
    model, tokenizer = build_policy(config, codec)
    model.audio_encoder.requires_grad_(False)  # the codec is trained already: its codes are the targets
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    start = model.generation_config.decoder_start_token_id
    grid = delay(codes, start)  # [N, K, T + K]
    real = window_mask(torch.full((len(codes),), codes.shape[-1]), codes.shape[1], grid.shape[-1])  # [N, K, L]
    model.train()
    history: list[dict[str, Any]] = []
    progress = tqdm(range(config.steps), desc="policy")
    for step in progress:
        rows = torch.randint(len(codes), (config.batch_size,), generator=generator)
        dropped = torch.rand(config.batch_size, generator=generator) < config.prompt_dropout
        loss = _loss(model, tokenizer, [captions[i] for i in rows.tolist()], grid[rows], real[rows], dropped)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 10 == 0 or step == config.steps - 1:
            history.append({"step": step, "loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, history


def _loss(
    model: MusicgenForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    grid: torch.Tensor,
    real: torch.Tensor,
    dropped: torch.Tensor,
) -> torch.Tensor:
    # Cross-entropy of every real (in-window) token of the delayed grid, given the positions before it.
    states, mask = encode_prompts(model, tokenizer, prompts, MAX_PROMPT_TOKENS)
    null_states, null_mask = unconditional(states, mask)
    states = torch.where(dropped[:, None, None], null_states, states)
    mask = torch.where(dropped[:, None], null_mask, mask)
    _, logits = decoder_pass(model, grid[..., :-1], states, mask)  # [B, K, P, V]
    targets, keep = grid[..., 1:], real[..., 1:]
    return F.cross_entropy(logits[keep], targets[keep])


def _schedule(step: int, config: PolicyTrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))
