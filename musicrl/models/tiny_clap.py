"""``tiny://clap``: a real CLAP (RoBERTa text tower, HTSAT audio tower) from a small config, offline.

The text-adherence and quality rewards embed audio and text with CLAP. Tests and the default local run
need one that builds in well under a second on a CPU, without the Hub: this module builds a real
``transformers.ClapModel`` with the same seeded, platform-independent weights as ``tiny://musicgen``
(:func:`musicrl.models.tiny.seeded_init_`) and a RoBERTa-style byte-level tokenizer.

The audio side keeps the production geometry, so the same code path serves ``laion/larger_clap_music``:
the stock 48 kHz ``ClapFeatureExtractor`` (64 mel bins, 480-sample hop, 10 s windows → 1001 frames)
and HTSAT's four Swin stages over a 256 × 256 spectrogram image. 256 is the smallest ``spec_size`` that
holds 1001 frames (HTSAT folds time into ``spec_size // num_mel_bins`` = 4 rows of ``spec_size`` frames).
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    PreTrainedTokenizerFast,
)

from musicrl.errors import InvalidRequest
from musicrl.models.tiny import bytes_to_unicode, seeded_init_


CLAP_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # RoBERTa's ids 0, 1, 2, 3
MASK_TOKEN = "<mask>"  # last id, after the 256 bytes, as in RoBERTa
CLAP_MAX_TEXT_TOKENS = 77  # the laion CLAP checkpoints truncate prompts to 77 tokens
NUM_MEL_BINS = 64  # ClapFeatureExtractor's default, as every laion checkpoint
SPEC_SIZE = 256  # smallest HTSAT image that holds 1001 frames of 64 mels (see the module docstring)
AUDIO_HEADS = (1, 2, 4, 8)  # per Swin stage; stage i is audio_width * 2**i wide, so every width divides
LOGIT_SCALE_INIT = 1 / 0.07  # ClapConfig's default temperature (CLIP's)
# Per-bin statistics for HTSAT's input BatchNorm. A trained checkpoint has learned them; left at 0 / 1 the
# random tower sees log-mels of tens of dB, saturates, and its embeddings barely separate bright from dull
# or loud from quiet audio: a ridge probe ranked synthetic MOS at Spearman 0.6-0.8 at 0 / 1 and at 0.99 with
# the values below, measured on noise and tones at -35 to -10 dBFS (mean -26 dB, standard deviation 30 dB).
MEL_DB_MEAN = -26.0
MEL_DB_STD = 30.0


@dataclass(frozen=True, slots=True)
class TinyClapSpec:
    """Sizes of a tiny CLAP; every field can be overridden in the URI query (``tiny://clap?seed=1``).

    Attributes:
        seed: Fixes every weight.
        text_hidden_size: RoBERTa width (768 in CLAP).
        text_layers: RoBERTa layers (12 in CLAP).
        text_heads: RoBERTa attention heads; must divide ``text_hidden_size``.
        audio_width: HTSAT patch-embedding width; stage i is ``audio_width * 2**i`` wide (128 in the music CLAP).
        audio_depth: Swin blocks per stage (``[2, 2, 12, 2]`` in the music CLAP).
        projection_dim: Width of the shared text–audio embedding space (512 in CLAP).
    """

    seed: int = 0
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 2
    audio_width: int = 8  # 8 → 64 wide at the last stage: ~0.13M parameters for the whole CLAP
    audio_depth: int = 1
    projection_dim: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value < 0 or (f.name != "seed" and value == 0):
                rule = ">= 0" if f.name == "seed" else "positive"
                raise InvalidRequest(f"tiny://clap parameter {f.name}={value} must be {rule}")
        if self.text_hidden_size % self.text_heads:
            raise InvalidRequest(
                f"tiny://clap text_hidden_size={self.text_hidden_size} must be a multiple of "
                f"text_heads={self.text_heads}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "TinyClapSpec":
        """Build a spec from URI query parameters, e.g. ``{"seed": "3", "audio_width": "16"}``.

        Args:
            params: Query parameters of a ``tiny://clap`` URI.

        Returns:
            The spec.

        Raises:
            InvalidRequest: An unknown key, a value that is not an integer, or sizes that do not fit together.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidRequest(f"unknown tiny://clap parameters {unknown}; known: {sorted(known)}")
        values: dict[str, int] = {}
        for key, raw in params.items():
            try:
                values[key] = int(raw)
            except ValueError as e:
                raise InvalidRequest(f"tiny://clap parameter {key}={raw!r} is not an integer") from e
        return cls(**values)


def roberta_byte_tokenizer(model_max_length: int = CLAP_MAX_TEXT_TOKENS) -> PreTrainedTokenizerFast:
    """A RoBERTa-style tokenizer over raw UTF-8 bytes, built offline (no hub download).

    Ids: 0 ``<s>``, 1 ``<pad>``, 2 ``</s>``, 3 ``<unk>``, then the 256 bytes, then ``<mask>`` (260).
    Every prompt is encoded as ``<s> bytes </s>``, as RoBERTa does, so CLAP's text pooler (the first token)
    reads ``<s>``.

    Args:
        model_max_length: Longest encoding, special tokens included; longer prompts are truncated.

    Returns:
        The tokenizer.
    """
    vocab = {token: i for i, token in enumerate(CLAP_SPECIAL_TOKENS)}
    for _byte, char in sorted(bytes_to_unicode().items()):
        vocab[char] = len(vocab)
    vocab[MASK_TOKEN] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return with_roberta_conventions(tokenizer, model_max_length)


def with_roberta_conventions(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers`` vocabulary (specials first: ``<s> <pad> </s> <unk>``, ``<mask>`` in it) as RoBERTa's.

    Every text becomes ``<s> text </s>``, which CLAP's text pooler (the first token) needs.
    """
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token=MASK_TOKEN,
        model_max_length=model_max_length,
    )


def tiny_clap_config(spec: TinyClapSpec) -> ClapConfig:
    """The composite CLAP config (RoBERTa text tower, HTSAT audio tower) for ``spec``."""
    text = ClapTextConfig(
        vocab_size=len(CLAP_SPECIAL_TOKENS) + 256 + 1,  # specials, bytes, <mask>
        hidden_size=spec.text_hidden_size,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        intermediate_size=2 * spec.text_hidden_size,
        max_position_embeddings=CLAP_MAX_TEXT_TOKENS + 2,  # RoBERTa positions start after the pad id (1)
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    audio = htsat_audio_config(spec.audio_width, spec.audio_depth)
    return ClapConfig(
        text_config=text,
        audio_config=audio,
        projection_dim=spec.projection_dim,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    )


def htsat_audio_config(width: int, depth: int, **overrides: object) -> ClapAudioConfig:
    """HTSAT at the production geometry (48 kHz log-mels, 10 s, 256 × 256 image), ``width`` wide, ``depth`` deep.

    Args:
        width: Patch-embedding width; stage i is ``width * 2**i`` wide.
        depth: Swin blocks per stage.
        overrides: Further ``ClapAudioConfig`` fields (for example dropout).
    """
    return ClapAudioConfig(
        spec_size=SPEC_SIZE,
        num_mel_bins=NUM_MEL_BINS,
        window_size=8,  # as HTSAT: divides the 64 × 64 patch grid and every stage after it
        patch_embeds_hidden_size=width,
        hidden_size=width * 2 ** (len(AUDIO_HEADS) - 1),  # the last stage's width
        depths=[depth] * len(AUDIO_HEADS),
        num_attention_heads=list(AUDIO_HEADS),
        enable_fusion=False,  # like laion/larger_clap_music: one 10 s crop, no multi-crop fusion branch
        **overrides,
    )


def tiny_clap_feature_extractor() -> ClapFeatureExtractor:
    """The stock 48 kHz CLAP feature extractor, set for an unfused model (one channel, no random fusion crops)."""
    return ClapFeatureExtractor(feature_size=NUM_MEL_BINS, truncation="rand_trunc", padding="repeatpad")


@torch.no_grad()
def build_tiny_clap(spec: TinyClapSpec) -> tuple[ClapModel, ClapFeatureExtractor, PreTrainedTokenizerFast]:
    """Build a tiny CLAP with weights fixed by ``spec.seed``, its feature extractor and its tokenizer.

    Args:
        spec: Sizes and seed.

    Returns:
        The model in eval mode (float32, CPU), the 48 kHz feature extractor and the byte-level tokenizer.
    """
    model = ClapModel(tiny_clap_config(spec)).eval()
    # seeded_init_ draws by parameter name; the two 0-d logit scales are left out (it handles tensors of
    # rank >= 1) and set to CLIP's temperature instead. Wrapping the children keeps the names unchanged.
    seeded_init_(torch.nn.ModuleDict(dict(model.named_children())), spec.seed)
    model.logit_scale_a.fill_(math.log(LOGIT_SCALE_INIT))
    model.logit_scale_t.fill_(math.log(LOGIT_SCALE_INIT))
    batch_norm = model.audio_model.audio_encoder.batch_norm
    batch_norm.running_mean.fill_(MEL_DB_MEAN)
    batch_norm.running_var.fill_(MEL_DB_STD**2)
    return model, tiny_clap_feature_extractor(), roberta_byte_tokenizer()
