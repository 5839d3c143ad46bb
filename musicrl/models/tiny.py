"""``tiny://`` models: real architectures from small configs with seeded random weights.

They run offline, in seconds, on a CPU: the tests and the default local run use them. Weights are drawn
with NumPy's PCG64 generator (a fixed, platform-independent bit stream) keyed by the seed and each
parameter's name, so the same seed gives bit-identical weights on every machine, whatever torch's own
RNG or CPU kernels do.
"""

import dataclasses
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

from musicrl.errors import InvalidRequest


TEXT_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2


@dataclass(frozen=True, slots=True)
class TinyMusicgenSpec:
    """Sizes of a tiny MusicGen; every field can be overridden in the URI query.

    The audio side keeps the real MusicGen geometry (32 kHz, 640-sample hop, 50 frames/s, 4 codebooks,
    delay pattern) so durations, frame counts and sample counts behave as in production.
    """

    seed: int = 0
    hidden_size: int = 64  # decoder width
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    ffn_dim: int = 128
    codebook_size: int = 128  # decoder vocabulary = EnCodec codebook size (2048 in MusicGen)
    num_codebooks: int = 4  # as MusicGen: 4 codebooks at 50 Hz
    text_hidden_size: int = 32  # T5 width; != hidden_size exercises the enc_to_dec projection
    max_position_embeddings: int = 2048  # 40 s at 50 frames/s, as MusicGen

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0 or (f.name != "seed" and value == 0):
                rule = ">= 0" if f.name == "seed" else "positive"
                raise InvalidRequest(f"tiny://musicgen parameter {f.name}={value} must be {rule}")
        if self.hidden_size % self.num_attention_heads:
            raise InvalidRequest(
                f"tiny://musicgen hidden_size={self.hidden_size} must be a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            raise InvalidRequest(
                f"tiny://musicgen codebook_size={self.codebook_size} must be a power of two >= 2 "
                "(EnCodec spends a whole number of bits per code)"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "TinyMusicgenSpec":
        """Build a spec from URI query parameters, e.g. ``{"seed": "3", "hidden_size": "256"}``.

        Raises:
            InvalidRequest: An unknown key, a value that is not an integer, or sizes that do not fit together.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidRequest(f"unknown tiny://musicgen parameters {unknown}; known: {sorted(known)}")
        values: dict[str, int] = {}
        for key, raw in params.items():
            try:
                values[key] = int(raw)
            except ValueError as e:
                raise InvalidRequest(f"tiny://musicgen parameter {key}={raw!r} is not an integer") from e
        return cls(**values)


def byte_level_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A T5-style tokenizer over raw UTF-8 bytes, built offline (no hub download).

    Ids: 0 ``<pad>``, 1 ``</s>`` (appended to every prompt, as T5 does), 2 ``<unk>``, then the 256 bytes.
    Any text tokenizes without unknowns, which is all a tiny text encoder needs.
    """
    vocab = {token: i for i, token in enumerate(TEXT_SPECIAL_TOKENS)}
    for _byte, char in sorted(bytes_to_unicode().items()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return with_t5_conventions(tokenizer, model_max_length)


def with_t5_conventions(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers`` vocabulary (specials first: ``<pad> </s> <unk>``) as T5's: ``text </s>``."""
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which the ByteLevel pre-tokenizer emits."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_musicgen_config(spec: TinyMusicgenSpec) -> MusicgenConfig:
    """The composite MusicGen config (T5 text encoder, EnCodec, decoder) for ``spec``."""
    special = spec.codebook_size  # MusicGen uses id == vocab size for pad / decoder start
    text = T5Config(
        vocab_size=len(TEXT_SPECIAL_TOKENS) + 256,
        d_model=spec.text_hidden_size,
        d_kv=16,
        d_ff=2 * spec.text_hidden_size,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    bits_per_codebook = int(np.log2(spec.codebook_size))
    audio = EncodecConfig(
        sampling_rate=32_000,
        audio_channels=1,
        num_filters=4,  # the real decoder is 32 filters wide; 4 keeps decoding cheap
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],  # hop 640 → 50 frames/s at 32 kHz, as MusicGen's EnCodec
        codebook_size=spec.codebook_size,
        codebook_dim=16,
        hidden_size=16,
        num_lstm_layers=1,
        # the bandwidth that makes EnCodec use exactly num_codebooks quantizers
        target_bandwidths=[spec.num_codebooks * 50 * bits_per_codebook / 1000],
        normalize=False,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=spec.codebook_size,
        max_position_embeddings=spec.max_position_embeddings,
        num_hidden_layers=spec.num_hidden_layers,
        ffn_dim=spec.ffn_dim,
        num_attention_heads=spec.num_attention_heads,
        hidden_size=spec.hidden_size,
        num_codebooks=spec.num_codebooks,
        pad_token_id=special,
        bos_token_id=special,
        decoder_start_token_id=special,  # without it, training with labels fails
    )
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def build_tiny_musicgen(spec: TinyMusicgenSpec) -> tuple[MusicgenForConditionalGeneration, PreTrainedTokenizerFast]:
    """Build a tiny MusicGen and its tokenizer with weights fixed by ``spec.seed``.

    Returns:
        The model in eval mode (float32, CPU) and its tokenizer.
    """
    model = MusicgenForConditionalGeneration(tiny_musicgen_config(spec)).eval()
    seeded_init_(model, spec.seed)
    special = spec.codebook_size
    generation = model.generation_config
    generation.pad_token_id = generation.decoder_start_token_id = generation.bos_token_id = special
    generation.do_sample, generation.guidance_scale, generation.top_k = True, 3.0, 250
    generation.max_length = 1500  # 30 s, as the released MusicGen checkpoints
    return model, byte_level_tokenizer()


@torch.no_grad()
def seeded_init_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter (and EnCodec's codebooks) with values fixed by ``seed`` and the name.

    Matrices get N(0, 1/fan_in) so activations keep their scale through random layers; 1-D weights (norm
    gains) get 1, biases 0. EnCodec's codebook embeddings start as zeros in transformers; random ones make
    different codes decode to different audio. Weight-norm gains are 1, so each filter has unit norm.
    """
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update({n: b for n, b in module.named_buffers() if n.endswith(("codebook.embed", "codebook.embed_avg"))})
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.ndim == 0:  # scalars such as CLAP's logit scales keep their configured value
            continue
        if name.endswith("parametrizations.weight.original0") or (tensor.ndim == 1 and name.endswith("weight")):
            tensor.fill_(1.0)
        elif tensor.ndim == 1:
            tensor.zero_()
        else:
            key = name.removesuffix("_avg")  # embed_avg mirrors embed: no EMA history yet
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            fan_in = int(np.prod(tensor.shape[1:]))
            scale = 1.0 if key.endswith("codebook.embed") else 1.0 / np.sqrt(fan_in)
            values = np.asarray(rng.standard_normal(tuple(tensor.shape), dtype=np.float32) * np.float32(scale))
            tensor.copy_(torch.from_numpy(values))
