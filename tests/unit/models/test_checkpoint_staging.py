"""Saving is staged: ``musicrl.json`` appears only once every other file is in place, locally and on stores."""

from pathlib import Path

import fsspec
import pytest

from musicrl.models.checkpoint import METADATA_FILE, CheckpointMetadata, read_metadata, save_checkpoint
from musicrl.models.loading import MusicgenBundle, load_musicgen
from tests.utils.tiny_models import differing_tensors


class WriterCrash(RuntimeError):
    """Injected into a save to stand for a full disk, a lost connection or a killed process."""


def _crash(staging: Path) -> None:
    (staging / "trainer_state.pt").write_bytes(b"half a file")
    raise WriterCrash("disk full")


def _marked_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(METADATA_FILE))


def test_a_crash_mid_save_leaves_no_marked_folder_and_no_staging(tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle):
    run = tmp_path / "run"
    with pytest.raises(WriterCrash):
        save_checkpoint(tiny_musicgen_bundle.model, tiny_musicgen_bundle.tokenizer, str(run / "step-1"),
                        CheckpointMetadata(kind="policy"), write_extra=_crash)  # fmt: skip
    assert _marked_folders(tmp_path) == []
    assert list(run.iterdir()) == []  # the staging folder went with the failure


def test_a_crash_while_overwriting_keeps_the_previous_checkpoint_whole(
    tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle
):
    dest = tmp_path / "ckpt"
    bundle = tiny_musicgen_bundle
    save_checkpoint(bundle.model, bundle.tokenizer, str(dest), CheckpointMetadata(kind="policy", training_run="a"))
    with pytest.raises(WriterCrash):
        save_checkpoint(
            bundle.model, bundle.tokenizer, str(dest), CheckpointMetadata(kind="policy"), write_extra=_crash
        )
    metadata = read_metadata(dest)
    assert metadata is not None and metadata.training_run == "a"
    assert not (dest / "trainer_state.pt").exists()  # nothing of the failed save reached the folder
    assert differing_tensors(load_musicgen(str(dest)).model, bundle.model) == []


def test_extra_files_are_published_with_the_model(tmp_path: Path, tiny_musicgen_bundle: MusicgenBundle):
    dest = tmp_path / "ckpt"

    def extra(staging: Path) -> None:
        assert not (staging / METADATA_FILE).exists()  # the extras are written before the marker
        (staging / "trainer_state.pt").write_bytes(b"state")

    save_checkpoint(tiny_musicgen_bundle.model, None, str(dest), CheckpointMetadata(kind="policy"), write_extra=extra)
    assert (dest / "trainer_state.pt").read_bytes() == b"state"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "musicrl-cache") == ["ckpt"]


def test_a_crash_mid_upload_leaves_an_object_store_folder_unmarked(
    memory_filesystem: fsspec.AbstractFileSystem, tiny_musicgen_bundle: MusicgenBundle, monkeypatch
):
    bundle, dest = tiny_musicgen_bundle, "memory://runs/ckpt"
    save_checkpoint(bundle.model, bundle.tokenizer, dest, CheckpointMetadata(kind="policy"))
    assert memory_filesystem.exists("/runs/ckpt/" + METADATA_FILE)
    put_file = type(memory_filesystem).put_file
    calls = []

    def failing_put_file(self, lpath, rpath, *args, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:  # the first file is in, the second fails: a half-updated folder
            raise WriterCrash("connection reset")
        return put_file(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(memory_filesystem), "put_file", failing_put_file)
    with pytest.raises(WriterCrash):
        save_checkpoint(bundle.model, bundle.tokenizer, dest, CheckpointMetadata(kind="policy"))
    assert not memory_filesystem.exists("/runs/ckpt/" + METADATA_FILE)
    assert not any(c.endswith(METADATA_FILE) for c in calls)
