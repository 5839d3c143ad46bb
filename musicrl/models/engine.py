"""The generation engine: text in, audio tokens and audio out, on the MusicGen decoder.

Written on the model's parts rather than ``generate()`` because serving and RL both need what
``generate()`` hides: the codes, per-request sampling settings inside one batch, per-request seeds,
and requests of different lengths leaving the batch as soon as they are done.

The decode loop follows MusicGen (Copet et al. 2023):

* the prompt is encoded once by the T5 encoder; the decoder cross-attends to it at every step;
* classifier-free guidance runs the unconditional prompt (zero states, zero mask) as extra rows of the
  same batch, only for the requests that use guidance;
* the K codebooks follow the delay pattern: codebook k lags k frames behind codebook 0, so a clip of T
  frames takes T + K - 1 steps, and positions outside a codebook's window hold the start token;
* keys and values are cached, so each step feeds one token per codebook.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import EncoderDecoderCache, MusicgenForConditionalGeneration

from musicrl.config import EngineConfig, SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.models.conditioning import encode_prompts
from musicrl.models.delay import in_window, undelay
from musicrl.models.kv_cache import decode_cache
from musicrl.models.loading import MusicgenBundle, load_musicgen
from musicrl.models.sampling import candidate_count, classifier_free_guidance, draw_uniforms, sample_tokens


logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One clip to generate.

    Attributes:
        prompt: The text prompt.
        params: How to sample it.
        seed: Seed of its sampling noise; the same (prompt, params, seed) gives the same codes.
    """

    prompt: str
    params: SamplingParams
    seed: int


@dataclass(frozen=True, slots=True)
class GeneratedClip:
    """One generated clip.

    Attributes:
        codes: Audio tokens without the delay pattern, int64 [K, T].
        audio: Mono waveform, float32 [S] with S = T * hop length.
        sample_rate: Samples per second of ``audio``.
        seed: The seed it was sampled with.
    """

    codes: torch.Tensor
    audio: torch.Tensor
    sample_rate: int
    seed: int

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return self.audio.shape[-1] / self.sample_rate


@dataclass(slots=True)
class DecodeState:
    """Per-request state of one decode loop, on the model's device; rows are indexed by request position."""

    frames: torch.Tensor  # int64 [B]: T per row
    temperature: torch.Tensor  # float32 [B]
    top_k: torch.Tensor  # int64 [B]
    guidance: torch.Tensor  # float32 [B]
    uniforms: torch.Tensor  # float64 [B, L - 1, K]: each row's own sampling noise, one draw per step
    tokens: torch.Tensor  # int64 [B, K, L]: delayed token grid, position 0 = start token
    text_states: torch.Tensor  # [B, S, D] projected, masked encoder states
    text_mask: torch.Tensor  # int64 [B, S]


@dataclass(frozen=True, slots=True)
class DecoderRows:
    """The decoder's batch: a conditional row per active request, then unconditional rows for guided ones."""

    active: torch.Tensor  # int64 [A]: request index of each conditional row
    guided: torch.Tensor  # int64 [G]: positions within ``active`` that use guidance
    index: torch.Tensor  # int64 [R = A + G]: request index of every decoder row
    states: torch.Tensor  # [R, S, D]: text states, zero on the unconditional rows
    mask: torch.Tensor  # int64 [R, S]: text mask, zero on the unconditional rows
    frames: torch.Tensor  # int64 [A]
    steps: torch.Tensor  # int64 [A]: T + K - 1
    temperature: torch.Tensor  # float32 [A]
    top_k: torch.Tensor  # int64 [A]
    guidance_scale: torch.Tensor  # float32 [G]


class GenerationEngine:
    """Batched MusicGen sampling with a KV cache, guidance, temperature, top-k and per-request seeds.

    Args:
        bundle: The loaded policy.
        config: Device and precision settings the bundle was loaded with.
    """

    def __init__(self, bundle: MusicgenBundle, config: EngineConfig) -> None:
        self.bundle = bundle
        self.config = config

    @classmethod
    def from_uri(cls, uri: str, config: EngineConfig | None = None) -> "GenerationEngine":
        """Load the policy at ``uri`` and wrap it in an engine."""
        config = config or EngineConfig()
        return cls(load_musicgen(uri, device=config.device, dtype=config.dtype), config)

    @property
    def model(self) -> MusicgenForConditionalGeneration:
        return self.bundle.model

    @property
    def num_codebooks(self) -> int:
        """K, the number of EnCodec codebooks."""
        return int(self.model.decoder.num_codebooks)

    @property
    def vocab_size(self) -> int:
        """V, the size of each codebook."""
        return int(self.model.config.decoder.vocab_size)

    @property
    def sample_rate(self) -> int:
        """Audio samples per second."""
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Token frames per second (50 for MusicGen)."""
        return float(self.model.config.audio_encoder.frame_rate)

    @property
    def start_token_id(self) -> int:
        """The token the decoder starts from and the delay pattern pads with."""
        generation = self.model.generation_config
        for candidate in (generation.decoder_start_token_id, self.model.config.decoder.decoder_start_token_id):
            if candidate is not None:
                return int(candidate)
        return int(self.model.config.decoder.pad_token_id)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def frames_for(self, duration_s: float) -> int:
        """Number of token frames T for a clip of ``duration_s`` seconds (at least one)."""
        return max(1, round(duration_s * self.frame_rate))

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, *, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate one clip per prompt with shared sampling settings.

        Args:
            prompts: B text prompts.
            params: Sampling settings for every clip.
            seeds: B seeds, one per prompt.

        Returns:
            ``(audio, codes)``: float32 [B, S] and int64 [B, K, T].

        Raises:
            InvalidRequest: No prompts, or a seed count that differs from the prompt count.
        """
        if len(seeds) != len(prompts):
            raise InvalidRequest(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        clips = self.generate_batch([GenerationRequest(p, params, s) for p, s in zip(prompts, seeds, strict=True)])
        return torch.stack([c.audio for c in clips]), torch.stack([c.codes for c in clips])

    def generate_batch(
        self, requests: Sequence[GenerationRequest], *, on_step: StepCallback | None = None
    ) -> list[GeneratedClip]:
        """Generate a batch whose requests may differ in prompt, settings, length and seed.

        Each clip depends only on its own request: the result is the same alone or batched.

        Args:
            requests: The clips to generate.
            on_step: Called as ``on_step(done, total)`` after each decode step (for progress bars).

        Returns:
            One clip per request, in order.
        """
        codes = self.sample_codes(requests, on_step=on_step)
        audio = self.decode_audio(codes)
        return [
            GeneratedClip(codes=c, audio=a, sample_rate=self.sample_rate, seed=r.seed)
            for c, a, r in zip(codes, audio, requests, strict=True)
        ]

    @torch.inference_mode()
    def sample_codes(
        self, requests: Sequence[GenerationRequest], *, on_step: StepCallback | None = None
    ) -> list[torch.Tensor]:
        """Run the decode loop and return each request's codes, int64 [K, T_b], on the CPU.

        Args:
            requests: The clips to sample.
            on_step: Called as ``on_step(done, total)`` after each decode step.
        """
        if not requests:
            raise InvalidRequest("at least one prompt is required")
        batch = self.prepare(requests)
        steps = [f + self.num_codebooks - 1 for f in batch.frames.tolist()]  # the delay pattern adds K - 1 steps
        rows = self.decoder_rows(batch, torch.arange(len(requests), device=self.device))
        candidates = candidate_count((r.params.top_k for r in requests), self.vocab_size)  # known here: no sync
        cache = decode_cache(self.model.config.decoder)
        for step in range(max(steps)):
            logits, cache = self.decoder_step(batch, rows, step, cache)  # [A, K, V]
            noise = batch.uniforms[rows.active, step]
            tokens = sample_tokens(logits, rows.temperature, rows.top_k, noise, candidates=candidates)  # [A, K]
            self.write_delayed(batch, rows, step + 1, tokens)
            if on_step is not None:
                on_step(step + 1, max(steps))
            if step + 1 in steps and step + 1 < max(steps):  # some requests are complete: drop their rows
                finished = rows.steps == step + 1  # [A]
                cache.batch_select_indices(self._kept_decoder_rows(rows, finished))
                rows = self.decoder_rows(batch, rows.active[~finished])
        grid = batch.tokens.cpu()
        return [undelay(grid[b], int(batch.frames[b])) for b in range(len(requests))]

    @torch.inference_mode()
    def decode_audio(self, codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode codes to waveforms with EnCodec, batching clips of equal length.

        Args:
            codes: Per clip int64 [K, T_b].

        Returns:
            Per clip float32 [S_b] on the CPU.
        """
        audio: list[torch.Tensor | None] = [None] * len(codes)
        by_length: dict[int, list[int]] = {}
        for index, c in enumerate(codes):
            by_length.setdefault(int(c.shape[-1]), []).append(index)
        for indices in by_length.values():
            stacked = torch.stack([codes[i] for i in indices]).to(self.device)  # [G, K, T]
            decoded = self.model.audio_encoder.decode(stacked[None], audio_scales=[None] * len(indices))
            values = decoded.audio_values[:, 0].float().cpu()  # [G, S]: mono channel
            for row, index in enumerate(indices):
                audio[index] = values[row]
        return [a for a in audio if a is not None]

    def prepare(self, requests: Sequence[GenerationRequest]) -> DecodeState:
        """The decode state of ``requests``: prompts encoded, noise drawn, grids at the start token.

        This and :meth:`decoder_rows`, :meth:`decoder_step` and :meth:`write_delayed` are the steps of a
        decode loop, shared by :meth:`sample_codes` and :class:`musicrl.models.continuous.ContinuousBatch`.

        Raises:
            InvalidRequest: A clip longer than the model's positions allow.
        """
        device = self.device
        frames = torch.tensor([self.frames_for(r.params.duration_s) for r in requests], device=device)
        max_position = int(frames.max()) + self.num_codebooks
        limit = int(self.model.config.decoder.max_position_embeddings)
        if max_position > limit:
            longest = (limit - self.num_codebooks) / self.frame_rate
            raise InvalidRequest(f"this model generates at most {longest:.1f} s per clip")
        states, mask = self._encode_text([r.prompt for r in requests])
        tokens = torch.full(
            (len(requests), self.num_codebooks, max_position), self.start_token_id, dtype=torch.long, device=device
        )  # [B, K, L]
        # every row draws noise for the longest row's steps: a prefix of its own stream, so unaffected by it
        uniforms = torch.stack([draw_uniforms(r.seed, max_position - 1, self.num_codebooks) for r in requests])
        return DecodeState(
            frames=frames,
            temperature=torch.tensor([r.params.temperature for r in requests], dtype=torch.float32, device=device),
            top_k=torch.tensor([r.params.top_k for r in requests], dtype=torch.long, device=device),
            guidance=torch.tensor([r.params.guidance_scale for r in requests], dtype=torch.float32, device=device),
            uniforms=uniforms.to(device),  # [B, L - 1, K]
            tokens=tokens,
            text_states=states,
            text_mask=mask,
        )

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states projected to the decoder width and zeroed at padding: [B, S, D], mask int64 [B, S]."""
        return encode_prompts(self.model, self.bundle.tokenizer, prompts, self.config.max_prompt_tokens)

    def decoder_rows(self, batch: DecodeState, active: torch.Tensor) -> DecoderRows:
        """The decoder batch for the ``active`` requests (recomputed only when requests finish)."""
        guided = torch.nonzero(batch.guidance[active] > 1).flatten()  # [G]
        index = torch.cat([active, active[guided]])  # [R]
        states = batch.text_states[index]  # [R, S, D]
        mask = batch.text_mask[index]  # [R, S]
        states[len(active) :] = 0  # the unconditional prompt: zero states under a zero mask, as MusicGen
        mask[len(active) :] = 0
        return DecoderRows(
            active=active,
            guided=guided,
            index=index,
            states=states,
            mask=mask,
            frames=batch.frames[active],
            steps=batch.frames[active] + self.num_codebooks - 1,
            temperature=batch.temperature[active],
            top_k=batch.top_k[active],
            guidance_scale=batch.guidance[active[guided]],
        )

    def decoder_step(
        self, batch: DecodeState, rows: DecoderRows, step: int, cache: EncoderDecoderCache
    ) -> tuple[torch.Tensor, EncoderDecoderCache]:
        """Feed position ``step`` of every active row; return guided float32 logits [A, K, V] and the cache.

        Every row is at the same position: the loop of :meth:`sample_codes`. (A
        :class:`~musicrl.models.continuous.ContinuousBatch` steps rows at different positions itself.)
        """
        input_ids = batch.tokens[rows.index, :, step]  # [R, K]
        out = self.model.decoder(
            input_ids=input_ids.reshape(-1, 1),  # [R * K, 1]: the decoder folds K into the batch
            encoder_hidden_states=rows.states,
            encoder_attention_mask=rows.mask,
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1, :].float().reshape(len(rows.index), self.num_codebooks, -1)  # [R, K, V]
        num_cond = len(rows.active)
        cond = logits[:num_cond]
        if len(rows.guided):
            cond[rows.guided] = classifier_free_guidance(cond[rows.guided], logits[num_cond:], rows.guidance_scale)
        return cond, out.cache

    @staticmethod
    def _kept_decoder_rows(rows: DecoderRows, finished: torch.Tensor) -> torch.Tensor:
        """Decoder rows (conditional, then unconditional) of the requests that are not ``finished`` [A]."""
        keep_cond = torch.nonzero(~finished).flatten()
        keep_uncond = len(rows.active) + torch.nonzero(~finished[rows.guided]).flatten()
        return torch.cat([keep_cond, keep_uncond])

    def write_delayed(self, batch: DecodeState, rows: DecoderRows, position: int, tokens: torch.Tensor) -> None:
        """Store sampled tokens at ``position`` of the active rows, keeping the start token outside each
        codebook's window."""
        real = in_window(position, rows.frames, self.num_codebooks)  # [A, K]
        start = torch.full_like(tokens, self.start_token_id)
        batch.tokens[rows.active, :, position] = torch.where(real, tokens, start)


def warm_up(engine: GenerationEngine, duration_s: float) -> None:
    """Generate one clip of ``duration_s`` seconds and log how long it took (nothing for 0).

    A server calls it before reporting ready: the first decode pays for lazy initialisation (the allocator
    growing, kernels being chosen, on a GPU the CUDA context), which would otherwise fall on the first user.
    """
    if duration_s <= 0:
        return
    started = time.perf_counter()
    engine.generate_batch([GenerationRequest("warm-up", SamplingParams(duration_s=duration_s), seed=0)])
    logger.info("warmed up with a %.2f s clip in %.2f s", duration_s, time.perf_counter() - started)
