"""Tests of ``tiny://clap`` and the CLAP loader: seeded weights, the RoBERTa-style tokenizer, loading by URI."""

from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from transformers import ClapProcessor

from musicrl.errors import IncompatibleModel, InvalidRequest, ModelNotFound
from musicrl.models.checkpoint import CheckpointMetadata, save_checkpoint
from musicrl.models.clap_loading import ClapBundle, load_clap
from musicrl.models.tiny_clap import MEL_DB_MEAN, MEL_DB_STD, TinyClapSpec, build_tiny_clap, roberta_byte_tokenizer
from musicrl.rewards.clap_embedding import embed_segments, embed_texts
from tests.utils.tiny_models import SavedTinyCheckpoint, differing_tensors, state_dict_fingerprint


# SHA-256 of the seed-0 tiny CLAP's state dict: pins cross-machine reproducibility (NumPy PCG64 weights).
# Change it only together with a deliberate change of TinyClapSpec's defaults or build_tiny_clap.
SEED0_FINGERPRINT = "73c36985b023c6e1db4429d34fa5a1c2a988094090f6ecbce5b277489393701c"
PROMPTS = ["warm analog synth pads", "ギターのアルペジオ 🎸", ""]


def _tone(seconds: float = 2.0, sample_rate: int = 48_000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _assert_same_clap(loaded: ClapBundle, original: ClapBundle) -> None:
    assert differing_tensors(loaded.model, original.model) == []
    for prompt in PROMPTS:
        assert loaded.tokenizer(prompt)["input_ids"] == original.tokenizer(prompt)["input_ids"], prompt
    assert loaded.feature_extractor.to_dict() == original.feature_extractor.to_dict()
    torch.testing.assert_close(embed_texts(loaded, PROMPTS), embed_texts(original, PROMPTS), rtol=0, atol=0)
    audio = [_tone()]
    torch.testing.assert_close(embed_segments(loaded, audio, 48_000, 4), embed_segments(original, audio, 48_000, 4))


def _save_processor_dir(bundle: ClapBundle, directory: Path) -> None:
    bundle.model.save_pretrained(directory)
    ClapProcessor(bundle.feature_extractor, bundle.tokenizer).save_pretrained(directory)


# seeded weights


def test_same_seed_builds_bit_identical_weights() -> None:
    first, _, _ = build_tiny_clap(TinyClapSpec(seed=7))
    second, _, _ = build_tiny_clap(TinyClapSpec(seed=7))

    assert differing_tensors(first, second) == []


def test_different_seeds_give_different_random_matrices() -> None:
    seed0, _, _ = build_tiny_clap(TinyClapSpec(seed=0))
    seed1, _, _ = build_tiny_clap(TinyClapSpec(seed=1))
    params0, params1 = dict(seed0.named_parameters()), dict(seed1.named_parameters())

    matrices = [name for name, p in params0.items() if p.ndim >= 2]
    identical = [name for name in matrices if torch.equal(params0[name], params1[name])]

    assert len(matrices) > 30  # every linear, conv, embedding and position-bias table of both towers
    assert identical == []


def test_seed0_weights_match_the_golden_fingerprint() -> None:
    model, _, _ = build_tiny_clap(TinyClapSpec(seed=0))

    assert state_dict_fingerprint(model) == SEED0_FINGERPRINT


def test_input_batch_norm_holds_log_mel_statistics() -> None:
    # left at 0 / 1 the random tower saturates on log-mels of tens of dB (see MEL_DB_MEAN in tiny_clap)
    model, _, _ = build_tiny_clap(TinyClapSpec())
    batch_norm = model.audio_model.audio_encoder.batch_norm

    assert torch.all(batch_norm.running_mean == MEL_DB_MEAN)
    assert torch.all(batch_norm.running_var == MEL_DB_STD**2)


# loading by URI


def test_loads_by_tiny_uri_frozen_and_seeded() -> None:
    bundle = load_clap("tiny://clap?seed=1")
    expected, _, _ = build_tiny_clap(TinyClapSpec(seed=1))

    assert differing_tensors(bundle.model, expected) == []
    assert not bundle.model.training
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert (bundle.sample_rate, bundle.max_audio_s, bundle.metadata) == (48_000, 10.0, None)
    assert bundle.feature_extractor.truncation == "rand_trunc"  # unfused model: one channel, no random crops


def test_uri_overrides_change_model_sizes() -> None:
    bundle = load_clap("tiny://clap?seed=0&audio_width=16&projection_dim=32&text_layers=1")
    config = bundle.model.config

    assert config.audio_config.patch_embeds_hidden_size == 16
    assert config.audio_config.hidden_size == 16 * 8  # the fourth Swin stage is 8× the patch width
    assert config.projection_dim == 32
    assert len(bundle.model.text_model.encoder.layer) == 1
    assert embed_texts(bundle, ["x"]).shape == (1, 32)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("tiny://clap?layers=3", r"unknown tiny://clap parameters \['layers'\]"),
        ("tiny://clap?seed=abc", r"seed='abc' is not an integer"),
        ("tiny://clap?text_heads=3", r"text_hidden_size=32 must be a multiple of text_heads=3"),
        ("tiny://clap?audio_width=0", r"audio_width=0 must be positive"),
        ("tiny://clap?seed=-1", r"seed=-1 must be >= 0"),
    ],
)
def test_bad_tiny_parameters_are_refused(uri: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        load_clap(uri)


def test_a_tiny_musicgen_is_not_a_clap() -> None:
    with pytest.raises(IncompatibleModel, match=r"tiny://musicgen\?seed=0 is not a CLAP"):
        load_clap("tiny://musicgen?seed=0")


# tokenizer


def test_tokenizer_is_roberta_style_over_bytes() -> None:
    tokenizer = roberta_byte_tokenizer()
    ids = tokenizer(PROMPTS[1])["input_ids"]

    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.mask_token_id == 260  # after the 4 specials and the 256 bytes, as RoBERTa puts it last
    assert ids[0] == 0 and ids[-1] == 2
    assert len(ids) == len(PROMPTS[1].encode()) + 2  # one token per UTF-8 byte, no unknowns
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPTS[1]
    assert len(tokenizer("a" * 500, truncation=True)["input_ids"]) == 77
    assert tokenizer(["ab", "abcd"], padding=True)["input_ids"][0] == [0, 101, 102, 2, 1, 1]


# saved checkpoints


def test_save_pretrained_folder_loads_by_path(tmp_path: Path) -> None:
    original = load_clap("tiny://clap?seed=0")
    _save_processor_dir(original, tmp_path)

    loaded = load_clap(str(tmp_path))

    _assert_same_clap(loaded, original)
    assert loaded.metadata is None
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_checkpoint_with_metadata_loads_by_file_uri(tmp_path: Path) -> None:
    original = load_clap("tiny://clap?seed=2")
    processor = ClapProcessor(original.feature_extractor, original.tokenizer)
    metadata = CheckpointMetadata(kind="embedder/clap", parent_uri="tiny://clap?seed=2")
    save_checkpoint(original.model, processor, str(tmp_path / "clap"), metadata)

    loaded = load_clap(f"file://{tmp_path / 'clap'}")

    _assert_same_clap(loaded, original)
    assert loaded.metadata == metadata


def test_checkpoint_round_trips_through_an_fsspec_store(memory_filesystem: fsspec.AbstractFileSystem) -> None:
    original = load_clap("tiny://clap?seed=3")
    processor = ClapProcessor(original.feature_extractor, original.tokenizer)
    save_checkpoint(original.model, processor, "memory://models/clap", CheckpointMetadata(kind="embedder/clap"))

    _assert_same_clap(load_clap("memory://models/clap"), original)


def test_a_musicgen_folder_is_not_a_clap(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    with pytest.raises(IncompatibleModel, match=r"holds a 'musicgen' model, not a CLAP"):
        load_clap(saved_tiny_checkpoint.uri)


def test_a_clap_folder_without_tokenizer_is_refused(tmp_path: Path) -> None:
    bundle = load_clap("tiny://clap?seed=0")
    bundle.model.save_pretrained(tmp_path)
    bundle.feature_extractor.save_pretrained(tmp_path)

    with pytest.raises(IncompatibleModel, match=r"has no tokenizer files \(tokenizer.json or vocab.json\)"):
        load_clap(str(tmp_path))


def test_a_clap_folder_without_feature_extractor_is_refused(tmp_path: Path) -> None:
    bundle = load_clap("tiny://clap?seed=0")
    bundle.model.save_pretrained(tmp_path)
    bundle.tokenizer.save_pretrained(tmp_path)

    with pytest.raises(IncompatibleModel, match=r"has no feature extractor files"):
        load_clap(str(tmp_path))


def test_unreadable_config_is_incompatible(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")

    with pytest.raises(IncompatibleModel, match=r"has no readable config.json"):
        load_clap(str(tmp_path))


def test_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_clap(str(tmp_path / "nowhere"))
