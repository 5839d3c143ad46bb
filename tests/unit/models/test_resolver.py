"""Tests of turning model URIs into local directories: local folders, fsspec stores, the Hugging Face Hub."""

import json
from pathlib import Path

import fsspec
import httpx2
import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from musicrl.errors import InvalidRequest, ModelNotFound
from musicrl.models.loading import load_musicgen
from musicrl.models.resolver import default_cache_dir, resolve_local_dir
from musicrl.models.uri import ModelURI
from tests.utils.tiny_models import differing_tensors, save_tiny_checkpoint


CHECKPOINT_FILES = {  # what the resolver must copy byte for byte, nested folders included
    "config.json": b'{"model_type": "musicgen"}',
    "model.safetensors": bytes(range(256)) * 4,
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


def _write_remote(fs: fsspec.AbstractFileSystem, root: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)


def _read_tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# local directories


@pytest.mark.parametrize("marker", ["config.json", "musicrl.json"])
def test_local_checkpoint_directory_resolves_to_itself(tmp_path: Path, marker: str) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / marker).write_text("{}")

    assert resolve_local_dir(ModelURI.parse(str(checkpoint))) == checkpoint
    assert resolve_local_dir(ModelURI.parse(f"file://{checkpoint}")) == checkpoint


def test_missing_local_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no checkpoint directory at .*/nowhere \(from "):
        resolve_local_dir(ModelURI.parse(str(tmp_path / "nowhere")))


def test_local_file_instead_of_directory_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")

    with pytest.raises(ModelNotFound, match=r"no checkpoint directory at"):
        resolve_local_dir(ModelURI.parse(str(tmp_path / "model.safetensors")))


def test_local_directory_without_config_or_metadata_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")

    with pytest.raises(ModelNotFound, match=r"holds no config.json or musicrl.json: it is not a save_pretrained"):
        resolve_local_dir(ModelURI.parse(str(tmp_path)))


def test_tiny_uri_has_no_directory() -> None:
    with pytest.raises(InvalidRequest, match=r"tiny://musicgen\?seed=0 is built in memory and has no directory"):
        resolve_local_dir(ModelURI.parse("tiny://musicgen?seed=0"))


def test_default_cache_dir_follows_the_environment(musicrl_cache_dir: Path) -> None:
    assert default_cache_dir() == musicrl_cache_dir


# fsspec stores (memory:// stands in for s3:// and gs://: same code path, no server needed)


def test_remote_checkpoint_is_downloaded_into_the_cache(
    memory_filesystem: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    _write_remote(memory_filesystem, "/models/policy-v1", CHECKPOINT_FILES)
    cache = tmp_path / "cache"

    local = resolve_local_dir(ModelURI.parse("memory://models/policy-v1"), cache_dir=cache)

    assert local.parent == cache / "remote"
    assert _read_tree(local) == CHECKPOINT_FILES
    assert [p.name for p in (cache / "remote").iterdir()] == [local.name]  # no .download-* staging dir is left


def test_cached_remote_checkpoint_is_not_downloaded_again(
    memory_filesystem: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    _write_remote(memory_filesystem, "/models/policy-v1", CHECKPOINT_FILES)
    uri = ModelURI.parse("memory://models/policy-v1")
    first = resolve_local_dir(uri, cache_dir=tmp_path)
    memory_filesystem.rm("/models", recursive=True)  # a second download would now fail

    second = resolve_local_dir(uri, cache_dir=tmp_path)

    assert second == first
    assert _read_tree(second) == CHECKPOINT_FILES


def test_remote_checkpoint_uses_the_default_cache(
    memory_filesystem: fsspec.AbstractFileSystem, musicrl_cache_dir: Path
) -> None:
    _write_remote(memory_filesystem, "/models/policy-v2", CHECKPOINT_FILES)

    local = resolve_local_dir(ModelURI.parse("memory://models/policy-v2"))

    assert local.parent == musicrl_cache_dir / "remote"


def test_different_remote_uris_get_different_cache_entries(
    memory_filesystem: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    _write_remote(memory_filesystem, "/models/a", {"config.json": b'{"name": "a"}'})
    _write_remote(memory_filesystem, "/models/b", {"config.json": b'{"name": "b"}'})

    a = resolve_local_dir(ModelURI.parse("memory://models/a"), cache_dir=tmp_path)
    b = resolve_local_dir(ModelURI.parse("memory://models/b"), cache_dir=tmp_path)

    assert a != b
    assert json.loads((b / "config.json").read_text()) == {"name": "b"}


def test_missing_remote_checkpoint_is_not_found(memory_filesystem: fsspec.AbstractFileSystem, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"no checkpoint directory at memory://models/absent"):
        resolve_local_dir(ModelURI.parse("memory://models/absent"), cache_dir=tmp_path)


def test_incomplete_remote_checkpoint_is_refused_and_leaves_no_cache_entry(
    memory_filesystem: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    _write_remote(memory_filesystem, "/models/half", {"model.safetensors": b"weights but no config"})

    with pytest.raises(ModelNotFound, match=r"holds no config.json or musicrl.json"):
        resolve_local_dir(ModelURI.parse("memory://models/half"), cache_dir=tmp_path)

    assert list((tmp_path / "remote").iterdir()) == []  # neither a staging dir nor a cached half checkpoint


# the Hugging Face Hub


def test_hf_uri_downloads_with_repo_revision_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one allowed fake in these tests: the Hub cannot be reached from this machine (no network), so
    # snapshot_download is replaced by a stand-in that records its arguments and returns a snapshot folder.
    calls: list[dict] = []
    snapshot = tmp_path / "snapshot"

    def fake_snapshot_download(**kwargs: object) -> str:
        calls.append(kwargs)
        snapshot.mkdir()
        (snapshot / "config.json").write_text("{}")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)

    local = resolve_local_dir(ModelURI.parse("hf://facebook/musicgen-small@v2"), cache_dir=tmp_path / "cache")

    assert local == snapshot
    assert calls == [{"repo_id": "facebook/musicgen-small", "revision": "v2", "cache_dir": str(tmp_path / "cache/hf")}]


def test_hf_uri_is_served_from_a_populated_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real snapshot_download, offline: it must find the snapshot in the cache folder we passed it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "hf" / "models--org--tiny-musicgen"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")

    local = resolve_local_dir(ModelURI.parse("hf://org/tiny-musicgen"), cache_dir=tmp_path / "cache")

    assert local == repo / "snapshots" / commit


def test_hf_repository_missing_from_an_offline_cache_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network

    with pytest.raises(ModelNotFound, match=r"cannot download hf://org/absent@main from the Hugging Face Hub"):
        resolve_local_dir(ModelURI.parse("hf://org/absent@main"), cache_dir=tmp_path)


def _repository_not_found() -> Exception:
    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/absent")
    return RepositoryNotFoundError(
        "404 Client Error: Repository Not Found", response=httpx2.Response(404, request=request)
    )


@pytest.mark.parametrize(
    "make_error", [_repository_not_found, lambda: LocalEntryNotFoundError("not in the local cache")]
)
def test_hub_errors_become_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_error) -> None:
    def failing_snapshot_download(**kwargs: object) -> str:  # stands in for the unreachable Hub (see above)
        raise make_error()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_snapshot_download)

    with pytest.raises(ModelNotFound, match=r"cannot download hf://org/absent from the Hugging Face Hub") as info:
        resolve_local_dir(ModelURI.parse("hf://org/absent"), cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, type(make_error()))  # chained with `from e`


def test_hub_snapshot_without_config_is_not_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "snapshot"
    empty.mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: str(empty))  # no Hub (see above)

    with pytest.raises(ModelNotFound, match=r"holds no config.json or musicrl.json"):
        resolve_local_dir(ModelURI.parse("hf://org/empty"), cache_dir=tmp_path)


# a real S3 API on loopback (moto's server)


def test_s3_checkpoint_round_trips_through_a_loopback_s3_server(s3_bucket: str, musicrl_cache_dir: Path) -> None:
    saved = save_tiny_checkpoint(f"{s3_bucket}/policies/v1")

    loaded = load_musicgen(saved.uri)

    assert differing_tensors(loaded.model, saved.original.model) == []
    assert loaded.metadata == saved.metadata
    cached = resolve_local_dir(loaded.uri)
    assert cached.parent == musicrl_cache_dir / "remote"
    assert (cached / "musicrl.json").is_file()


def test_missing_s3_checkpoint_is_not_found(s3_bucket: str) -> None:
    with pytest.raises(ModelNotFound, match=r"no checkpoint directory at s3://.*/policies/absent"):
        load_musicgen(f"{s3_bucket}/policies/absent")


def test_toy_uri_of_a_model_not_shipped_names_the_shipped_ones_and_the_command() -> None:
    with pytest.raises(ModelNotFound, match=r"not shipped with this package; shipped: .*musicrl toyworld train"):
        resolve_local_dir(ModelURI.parse("toy://no-such-model"))
