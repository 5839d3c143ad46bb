"""Fixtures shared by every test: an isolated model cache, tiny models and checkpoints, fsspec stores."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import fsspec.config
import pytest
import torch

from musicrl.models.loading import MusicgenBundle, load_musicgen
from tests.utils.tiny_models import TINY_MUSICGEN_URI, SavedTinyCheckpoint, save_tiny_checkpoint


# Tests run tiny models, which gain nothing from intra-op threads; and when the machine is busy (servers in
# subprocesses, a second test process), OpenMP's thread teams wait on each other for a scheduler slice per
# operation: an RL step measured 1.4 s with one thread and 21 s with two on an oversubscribed machine.
# Subprocesses started by the tests inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def musicrl_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``MUSICRL_CACHE_DIR`` at a per-test folder so no test writes to the home cache."""
    cache = tmp_path / "musicrl-cache"
    monkeypatch.setenv("MUSICRL_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def tiny_musicgen_bundle() -> MusicgenBundle:
    """A fresh ``tiny://musicgen?seed=0`` bundle, loaded through the production resolver (per test: mutable)."""
    return load_musicgen(TINY_MUSICGEN_URI)


@pytest.fixture
def saved_tiny_checkpoint(tmp_path: Path) -> SavedTinyCheckpoint:
    """The seed-0 tiny MusicGen saved with ``save_checkpoint`` into a local folder, with policy metadata."""
    return save_tiny_checkpoint(tmp_path / "tiny-checkpoint")


@pytest.fixture
def memory_filesystem() -> Iterator[fsspec.AbstractFileSystem]:
    """fsspec's process-wide ``memory://`` store, emptied before and after the test."""
    fs = fsspec.filesystem("memory")

    def clear() -> None:
        fs.store.clear()
        fs.pseudo_dirs.clear()
        fs.pseudo_dirs.append("")  # MemoryFileSystem's initial state: the root is a known directory
        fs.invalidate_cache()

    clear()
    yield fs
    clear()


@pytest.fixture(scope="session")
def moto_s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on a free loopback port, for the whole session; yields its URL."""
    import moto.server as moto_server  # a dev extra; imported here so sessions without S3 tests skip the cost

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty bucket on the loopback S3 server, reachable as ``s3://<name>`` through fsspec; yields that URL.

    Credentials are dummies (moto accepts any); the endpoint reaches s3fs through ``fsspec.config.conf``, the
    same way a deployment would configure it, so the code under test passes no storage options.
    """
    import boto3
    import s3fs

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(
        fsspec.config.conf, "s3", {"endpoint_url": moto_s3_endpoint, "key": "testing", "secret": "testing"}
    )
    bucket = f"musicrl-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()  # no listing cached by an earlier test's instance
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()
