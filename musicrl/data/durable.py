"""Durable writes to any fsspec URL: once a write returns, the file survives a crash and is never seen half-written.

On a local file system the bytes go to a hidden temp file in the target folder, which is flushed, fsync'ed and
renamed into place, and the folder is fsync'ed so the rename itself survives a power cut. On an object store
(``s3://``, ``gs://``, ...) the object is written in one put, which the store makes visible atomically.

It needs only fsspec (a base dependency), so every image can use it: the dataset, keys files, checkpoints.
"""

import contextlib
import os
import tempfile

import fsspec
from fsspec.implementations.local import LocalFileSystem


def join_url(base: str, *parts: str) -> str:
    """``base/part/part`` for a local path or any fsspec URL."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_durably(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` so that, once this returns, it survives a crash and is never seen half-written.

    Args:
        url: Local path, ``file://`` URL or any fsspec URL.
        data: The file's content.

    Raises:
        OSError: The file system or object store refused the write.
    """
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        _write_local(path, data)
    else:
        fs.pipe_file(path, data)  # one put: an object store makes the object visible whole or not at all


def _write_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    _make_dirs_durably(folder)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(folder)


def _make_dirs_durably(folder: str) -> None:
    """``mkdir -p`` that also fsyncs the parent of every folder it creates, so the new entries persist."""
    missing = []
    current = os.path.abspath(folder)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for created in reversed(missing):
        os.makedirs(created, exist_ok=True)
        _fsync_dir(os.path.dirname(created))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
