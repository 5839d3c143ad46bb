"""Train the toy world's CLAP: a real ``transformers.ClapModel`` that hears the world's attributes and defects.

The audio tower is HTSAT at ``tiny://clap``'s geometry (the stock 48 kHz ``ClapFeatureExtractor``, 10 s
windows, a 256 × 256 spectrogram image), so the platform's rewards read it exactly as they read
``laion/larger_clap_music``; the text tower is RoBERTa over the world's words
(:func:`musicrl.toyworld.tokenizer.roberta_word_tokenizer`). Both train from scratch with CLAP's
objective, a symmetric InfoNCE over the batch (Wu et al., 2023), on (clip, caption) pairs of the degraded
corpus: clean clips and clips with one defect, whose captions name the defect, so the embedding carries
what the quality head later needs.

The data (:mod:`musicrl.toyworld.clap_data`) is rendered and turned into log-mels once, before training;
the best step by validation retrieval is kept, and the test split is scored once, through the platform's
reward code (:mod:`musicrl.toyworld.clap_eval`), on the kept model.
"""

import contextlib
import dataclasses
import io
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.clap_loading import ClapBundle
from musicrl.models.tiny_clap import (
    LOGIT_SCALE_INIT,
    htsat_audio_config,
    tiny_clap_feature_extractor,
)
from musicrl.models.uri import ModelURI
from musicrl.rewards.train_quality import METRICS_FILE, PLOT_FILE
from musicrl.toyworld.clap_data import caption_fits, clip_features, single_defect_examples
from musicrl.toyworld.clap_eval import evaluate_clap, recall_at_1
from musicrl.toyworld.corpus import Example
from musicrl.toyworld.tokenizer import roberta_word_tokenizer


logger = logging.getLogger(__name__)

CLAP_KIND = "clap"  # the text-adherence reward's model (and the quality head's embedder)
MAX_TEXT_TOKENS = 32  # the longest caption, "<s> a drone that is …, hissy </s>", is 15 tokens


@dataclass(frozen=True, slots=True)
class ClapTrainConfig:
    """How the toy CLAP is trained.

    Attributes:
        seed: Fixes the corpus, the initial weights and the batch order.
        examples: Training clips (train split), each with one caption.
        valid_examples: Validation clips: the best step by their retrieval R@1 is kept.
        test_examples: Test clips scored once on the saved model; 0 skips the test.
        clean_p: Share of clean clips; the others carry one defect at a random level.
        steps: Optimiser steps.
        batch_size: Pairs per step: each clip's caption is told apart from the batch's other captions.
        lr: Peak AdamW step size, after a linear warm-up, decayed by a cosine to a tenth.
        warmup_steps: Steps of linear warm-up.
        weight_decay: AdamW weight decay.
        eval_every: Steps between validation measurements.
        audio_width: HTSAT patch-embedding width; stage i is ``audio_width * 2**i`` wide.
        audio_depth: Swin blocks per stage.
        text_width: RoBERTa width.
        text_layers: RoBERTa layers.
        text_heads: RoBERTa attention heads.
        projection_dim: Width of the shared embedding space.
        threads: Torch intra-op threads; a fixed count keeps the weights bit-identical between runs.
    """

    seed: int = 0
    examples: int = 2_000  # ~40 s to render and transform on one thread; no train-valid gap at this size
    valid_examples: int = 200
    test_examples: int = 200
    clean_p: float = 0.1  # 0.3 left the embedding too little of each defect's severity for the quality head
    steps: int = 400  # ~5 min on one thread; validation R@1 still rises slowly at the end
    batch_size: int = 32  # 64 at half the steps retrieved worse: updates count more than negatives here
    lr: float = 1e-3  # 3e-3 ended 0.1 lower in retrieval
    warmup_steps: int = 30
    weight_decay: float = 0.01
    eval_every: int = 50
    audio_width: int = 16
    audio_depth: int = 1
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    projection_dim: int = 128  # 64 kept less of the defects for the quality head, and retrieved less well
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("examples", "valid_examples", "steps", "batch_size", "eval_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size > self.examples:
            raise ValueError(f"batch_size={self.batch_size} exceeds examples={self.examples}: lower it or add clips")
        if not 0.0 <= self.clean_p <= 1.0:
            raise ValueError(f"clean_p must lie in [0, 1], got {self.clean_p}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width={self.text_width} must be a multiple of text_heads={self.text_heads}")


def toy_clap_config(config: ClapTrainConfig, vocab_size: int) -> ClapConfig:
    """The CLAP of ``config``: ``tiny://clap``'s audio geometry, a word-level RoBERTa, no dropout.

    No dropout: the model is small next to its data and sees each clip a few times, so it underfits rather
    than overfits, and dropout's random masks would cost a tenth of every step.
    """
    text = ClapTextConfig(
        vocab_size=vocab_size,
        hidden_size=config.text_width,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        intermediate_size=2 * config.text_width,
        max_position_embeddings=MAX_TEXT_TOKENS + 2,  # RoBERTa positions start after the pad id (1)
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = htsat_audio_config(config.audio_width, config.audio_depth, hidden_dropout_prob=0.0)
    return ClapConfig(
        text_config=text,
        audio_config=audio,
        projection_dim=config.projection_dim,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    )


@dataclass(frozen=True, slots=True)
class _Pairs:
    """Clips and captions, ready for the towers."""

    features: torch.Tensor  # float32 [N, 1, frames, mels]
    input_ids: torch.Tensor  # int64 [N, L]
    attention_mask: torch.Tensor  # int64 [N, L]
    fits: torch.Tensor  # bool [N, N]: caption i describes clip j (caption_fits)

    @classmethod
    def of(cls, examples: Sequence[Example], feature_extractor: ClapFeatureExtractor, tokenizer: Any) -> "_Pairs":
        tokens = tokenizer([e.caption.text for e in examples], padding=True, truncation=True, return_tensors="pt")
        features = clip_features(feature_extractor, [e.audio for e in examples])
        return cls(features, tokens["input_ids"], tokens["attention_mask"], caption_fits(examples))


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Run torch on ``threads`` intra-op threads with deterministic kernels, then restore both settings."""
    previous_threads, previous_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_mode)


def _init_model(config: ClapTrainConfig, vocab_size: int, train: _Pairs) -> ClapModel:
    """Seeded weights; the input BatchNorm fixed to the training log-mels' per-bin statistics.

    HTSAT normalises each mel bin with a BatchNorm before anything else. Its statistics are set once from
    the whole training set and frozen (with an identity affine): batch statistics would differ between
    training and scoring, and a learnt affine would cost a backward pass through the bicubic resize.
    """
    torch.manual_seed(config.seed)
    model = ClapModel(toy_clap_config(config, vocab_size))
    batch_norm = model.audio_model.audio_encoder.batch_norm
    with torch.no_grad():
        batch_norm.running_mean.copy_(train.features.mean(dim=(0, 1, 2)))  # [M]
        batch_norm.running_var.copy_(train.features.var(dim=(0, 1, 2)))  # [M]
    batch_norm.requires_grad_(False)
    return model


def _set_training(model: ClapModel, training: bool) -> None:
    model.train(training)
    model.audio_model.audio_encoder.batch_norm.eval()  # frozen statistics (see _init_model)


def _info_nce(model: ClapModel, pairs: _Pairs, batch: torch.Tensor) -> torch.Tensor:
    """CLAP's loss: cross-entropy of each caption over the batch's clips and of each clip over its captions.

    The symmetric InfoNCE of CLIP and CLAP, with every clip a caption fits as a positive (the target spread
    evenly over them) rather than its own clip alone; with one positive per row it is CLAP's loss exactly.
    transformers' ``return_loss`` is not used: it transposes ``logits_per_audio`` before its second
    cross-entropy, so both of its terms classify clips given a caption.
    """
    out = model(
        input_ids=pairs.input_ids[batch],
        attention_mask=pairs.attention_mask[batch],
        input_features=pairs.features[batch],
    )
    fits = pairs.fits[batch][:, batch].float()  # [B, B]: caption (row) describes clip (column)
    per_text = fits / fits.sum(dim=1, keepdim=True)  # [B, B]
    per_audio = fits.T / fits.T.sum(dim=1, keepdim=True)  # [B, B]
    return (F.cross_entropy(out.logits_per_text, per_text) + F.cross_entropy(out.logits_per_audio, per_audio)) / 2


@torch.no_grad()
def _embed(model: ClapModel, pairs: _Pairs, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit text and audio embeddings, float32 [N, D] each, in eval mode."""
    _set_training(model, False)
    text = F.normalize(
        model.get_text_features(input_ids=pairs.input_ids, attention_mask=pairs.attention_mask).pooler_output, dim=-1
    )
    audio = torch.cat(
        [model.get_audio_features(input_features=f).pooler_output for f in pairs.features.split(batch_size)]
    )
    return text, F.normalize(audio, dim=-1)


def _lr_factor(step: int, config: ClapTrainConfig) -> float:
    if step <= config.warmup_steps:
        return step / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled batches of indices, epoch after epoch; an epoch's last partial batch is dropped."""
    while True:
        order = torch.randperm(count, generator=generator)
        yield from order[: count - count % batch_size].split(batch_size)


def _fit(
    model: ClapModel, train: _Pairs, valid: _Pairs, config: ClapTrainConfig
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """Train; return one record per validation and the weights of the best validation R@1."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step + 1, config))
    batches = _batches(train.features.shape[0], config.batch_size, torch.Generator().manual_seed(config.seed))
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    buffers: dict[str, list[float]] = defaultdict(list)
    progress = tqdm(range(1, config.steps + 1), desc="training CLAP", unit="step")
    for step in progress:
        _set_training(model, True)
        loss = _info_nce(model, train, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        buffers["train/loss"].append(loss.item())
        if step % config.eval_every and step != config.steps:
            continue
        text, audio = _embed(model, valid)
        record = {"step": float(step), **{k: float(np.mean(v)) for k, v in buffers.items()}}
        record |= {"valid/r_at_1": recall_at_1(text, audio, seed=config.seed), "lr": float(schedule.get_last_lr()[0])}
        record["logit_scale"] = model.logit_scale_t.exp().item()
        history.append(record)
        buffers.clear()
        progress.set_postfix(loss=record["train/loss"], r_at_1=record["valid/r_at_1"], refresh=False)
        if record["valid/r_at_1"] > best[0]:
            best = (record["valid/r_at_1"], {k: v.detach().clone() for k, v in model.state_dict().items()})
    return history, best[1]


def train_clap(config: ClapTrainConfig, out_dir: Path) -> dict[str, float]:
    """Train the toy CLAP and save it under ``out_dir``, loadable with ``load_clap(str(out_dir))``.

    Args:
        config: Corpus, sizes and optimisation.
        out_dir: The checkpoint folder; ``metrics.jsonl`` and the training plot are written into it.

    Returns:
        The kept step's validation metrics, the test metrics (``test/r_at_1``, ``test/matched_above_mismatched``)
        unless ``config.test_examples`` is 0, and the time taken (``time/*_s``).
    """
    started = time.perf_counter()
    feature_extractor, tokenizer = tiny_clap_feature_extractor(), roberta_word_tokenizer(MAX_TEXT_TOKENS)
    with deterministic(config.threads):
        train = _Pairs.of(
            single_defect_examples(config.seed, "train", config.examples, config.clean_p), feature_extractor, tokenizer
        )
        valid = _Pairs.of(
            single_defect_examples(config.seed, "valid", config.valid_examples, config.clean_p),
            feature_extractor,
            tokenizer,
        )
        prepared = time.perf_counter()
        model = _init_model(config, len(tokenizer), train)
        history, best = _fit(model, train, valid, config)
        model.load_state_dict(best)
        _set_training(model, False)
        model.requires_grad_(False)
        trained = time.perf_counter()
        kept = max(history, key=lambda r: r["valid/r_at_1"])
        metrics = {"valid/r_at_1": kept["valid/r_at_1"], "kept_step": kept["step"]}
        if config.test_examples:
            bundle = ClapBundle(model, feature_extractor, tokenizer, ModelURI.parse(str(out_dir.resolve())), None)
            tested = single_defect_examples(config.seed, "test", config.test_examples, config.clean_p)
            metrics |= {f"test/{k}": v for k, v in evaluate_clap(bundle, tested, seed=config.seed).items()}
    metrics |= {
        "time/data_s": prepared - started,
        "time/train_s": trained - prepared,
        "time/total_s": time.perf_counter() - started,
    }
    _save(model, feature_extractor, tokenizer, out_dir, config, history, metrics)
    return metrics


def _save(
    model: ClapModel,
    feature_extractor: ClapFeatureExtractor,
    tokenizer: Any,
    out_dir: Path,
    config: ClapTrainConfig,
    history: list[dict[str, float]],
    metrics: dict[str, float],
) -> None:
    def extra(staging: Path) -> None:
        feature_extractor.save_pretrained(staging)
        (staging / METRICS_FILE).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        (staging / PLOT_FILE).write_bytes(_plot(history))

    metadata = CheckpointMetadata(
        kind=CLAP_KIND,
        training_run=f"toyworld-clap-seed{config.seed}",
        metrics=metrics,
        extra={"config": dataclasses.asdict(config)},
    )
    save_checkpoint(model, tokenizer, str(out_dir), metadata, write_extra=extra)


def _plot(history: list[dict[str, float]]) -> bytes:
    """Two panels, PNG bytes: the contrastive loss and the validation R@1 against the step."""
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)  # draws without pyplot, so no global backend is switched
    steps = [r["step"] for r in history]
    panels = (("train/loss", "contrastive loss (train)"), ("valid/r_at_1", "retrieval R@1 among 10 (validation)"))
    for position, (key, label) in enumerate(panels, 1):
        axes = figure.add_subplot(1, 2, position)
        axes.plot(steps, [r[key] for r in history], marker=".")
        axes.set(xlabel="step", ylabel=label)
        axes.grid(alpha=0.3)
    figure.suptitle("toy CLAP")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
