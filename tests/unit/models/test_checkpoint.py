"""Tests of checkpoints: musicrl.json metadata, saving to folders and fsspec stores, loading them back."""

import datetime
import json
from pathlib import Path

import fsspec
import pytest
import torch
from transformers import MusicgenForConditionalGeneration, T5Config, T5EncoderModel

from musicrl.errors import IncompatibleModel, InvalidRequest
from musicrl.models.checkpoint import METADATA_FILE, SCHEMA_VERSION, CheckpointMetadata, read_metadata, save_checkpoint
from musicrl.models.loading import MusicgenBundle, load_musicgen
from musicrl.models.tiny import TinyMusicgenSpec, byte_level_tokenizer, tiny_musicgen_config
from tests.utils.tiny_models import SavedTinyCheckpoint, differing_tensors, save_tiny_checkpoint, tiny_policy_metadata


PROMPTS = ["warm analog synth pads", "ギターのアルペジオ 🎸", ""]


def _assert_same_tokenizer(loaded: MusicgenBundle, original: MusicgenBundle) -> None:
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt)["input_ids"]
        assert ids == original.tokenizer(prompt)["input_ids"], prompt
        assert loaded.tokenizer.decode(ids, skip_special_tokens=True) == prompt
    assert loaded.tokenizer.pad_token_id == original.tokenizer.pad_token_id == 0


# metadata


def test_metadata_round_trips_through_json() -> None:
    metadata = tiny_policy_metadata(extra={"kl_reference": "tiny://musicgen?seed=0", "steps": 10})

    wire = json.loads(json.dumps(metadata.to_wire()))

    assert CheckpointMetadata.from_wire(wire) == metadata
    assert wire["kind"] == "policy"
    assert wire["metrics"] == {"reward/mean": 0.25, "kl": 0.01}
    assert wire["schema_version"] == SCHEMA_VERSION


def test_metadata_defaults_to_an_aware_utc_timestamp() -> None:
    created = datetime.datetime.fromisoformat(CheckpointMetadata(kind="value").created_at)

    assert created.utcoffset() == datetime.timedelta(0)


def test_from_wire_ignores_fields_from_a_newer_writer() -> None:
    wire = {"kind": "reward/preference", "schema_version": SCHEMA_VERSION + 1, "lineage": ["a", "b"], "metrics": {}}

    metadata = CheckpointMetadata.from_wire(wire)

    assert metadata.kind == "reward/preference"
    assert metadata.schema_version == SCHEMA_VERSION + 1
    assert not hasattr(metadata, "lineage")


def test_from_wire_refuses_metadata_without_kind() -> None:
    with pytest.raises(InvalidRequest, match=r"musicrl.json has no 'kind' field"):
        CheckpointMetadata.from_wire({"parent_uri": "tiny://musicgen?seed=0"})


def test_read_metadata_is_none_without_a_metadata_file(tmp_path: Path) -> None:
    assert read_metadata(tmp_path) is None


# save and load


def test_saved_checkpoint_loads_by_plain_path(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    loaded = load_musicgen(saved_tiny_checkpoint.uri)

    assert differing_tensors(loaded.model, saved_tiny_checkpoint.original.model) == []
    _assert_same_tokenizer(loaded, saved_tiny_checkpoint.original)
    assert loaded.metadata == saved_tiny_checkpoint.metadata
    assert (loaded.metadata.kind, loaded.metadata.parent_uri) == ("policy", "tiny://musicgen?seed=0")
    assert loaded.metadata.metrics == {"reward/mean": 0.25, "kl": 0.01}


def test_saved_checkpoint_loads_by_file_uri(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    loaded = load_musicgen(f"file://{saved_tiny_checkpoint.uri}")

    assert differing_tensors(loaded.model, saved_tiny_checkpoint.original.model) == []
    assert loaded.metadata == saved_tiny_checkpoint.metadata


def test_loaded_checkpoint_is_frozen_and_in_eval_mode(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    model = load_musicgen(saved_tiny_checkpoint.uri).model

    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_checkpoint_loads_in_bfloat16(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    model = load_musicgen(saved_tiny_checkpoint.uri, dtype="bfloat16").model

    assert {p.dtype for p in model.decoder.parameters()} | {p.dtype for p in model.text_encoder.parameters()} == {
        torch.bfloat16
    }
    assert {p.dtype for p in model.audio_encoder.parameters()} == {torch.float32}  # EnCodec decodes in float32


def test_unknown_dtype_is_refused(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    with pytest.raises(InvalidRequest, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'fp8'"):
        load_musicgen(saved_tiny_checkpoint.uri, dtype="fp8")


def test_checkpoint_round_trips_through_an_fsspec_store(memory_filesystem: fsspec.AbstractFileSystem) -> None:
    saved = save_tiny_checkpoint("memory://checkpoints/policy-v1")

    loaded = load_musicgen("memory://checkpoints/policy-v1")

    assert saved.uri == "memory://checkpoints/policy-v1"
    assert differing_tensors(loaded.model, saved.original.model) == []
    _assert_same_tokenizer(loaded, saved.original)
    assert loaded.metadata == saved.metadata


def test_metadata_file_is_written_last(memory_filesystem: fsspec.AbstractFileSystem) -> None:
    # on object stores its presence marks a complete checkpoint; the memory store keeps files in creation order
    save_tiny_checkpoint("memory://checkpoints/ordered")

    written = [path.rsplit("/", 1)[-1] for path in memory_filesystem.store]

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(written)
    assert written[-1] == METADATA_FILE


def test_saved_metadata_file_is_plain_json(saved_tiny_checkpoint: SavedTinyCheckpoint) -> None:
    wire = json.loads((Path(saved_tiny_checkpoint.uri) / METADATA_FILE).read_text())

    assert wire == saved_tiny_checkpoint.metadata.to_wire()


def test_checkpoint_without_metadata_loads_with_none(tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle) -> None:
    # a plain save_pretrained folder, as downloaded from the Hub
    tiny_musicgen_bundle.model.save_pretrained(tmp_path)
    tiny_musicgen_bundle.tokenizer.save_pretrained(tmp_path)

    loaded = load_musicgen(str(tmp_path))

    assert loaded.metadata is None
    assert differing_tensors(loaded.model, tiny_musicgen_bundle.model) == []


def test_save_creates_nested_destination_and_returns_it(tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle) -> None:
    dest = str(tmp_path / "nested" / "deeper" / "ckpt")

    returned = save_checkpoint(tiny_musicgen_bundle.model, None, dest, CheckpointMetadata(kind="policy"))

    assert returned == dest
    assert (Path(dest) / "config.json").is_file()
    assert read_metadata(Path(dest)) is not None


# incompatible checkpoints


def test_non_musicgen_transformers_model_is_incompatible(tmp_path: Path) -> None:
    config = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)  # tiny: saves fast
    T5EncoderModel(config).save_pretrained(tmp_path)
    byte_level_tokenizer().save_pretrained(tmp_path)

    with pytest.raises(IncompatibleModel, match=r"holds a 't5' model, not a MusicGen"):
        load_musicgen(str(tmp_path))


def test_checkpoint_without_tokenizer_is_incompatible(tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle) -> None:
    save_checkpoint(tiny_musicgen_bundle.model, None, str(tmp_path), CheckpointMetadata(kind="policy"))

    with pytest.raises(IncompatibleModel, match=r"has no tokenizer files .*; save the tokenizer with the model"):
        load_musicgen(str(tmp_path))


def test_stereo_musicgen_is_incompatible(tmp_path: Path) -> None:
    config = tiny_musicgen_config(TinyMusicgenSpec())
    config.decoder.audio_channels = 2
    MusicgenForConditionalGeneration(config).save_pretrained(tmp_path)
    byte_level_tokenizer().save_pretrained(tmp_path)

    with pytest.raises(IncompatibleModel, match=r"is a stereo MusicGen; only mono checkpoints are served"):
        load_musicgen(str(tmp_path))


def test_unreadable_config_is_incompatible(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")

    with pytest.raises(IncompatibleModel, match=r"has no readable config.json"):
        load_musicgen(str(tmp_path))


def test_metadata_without_weights_is_incompatible(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text(json.dumps({"kind": "policy"}))

    with pytest.raises(IncompatibleModel, match=r"has no readable config.json"):
        load_musicgen(str(tmp_path))
