"""Turn a model URI into a local directory, downloading into a cache when it is remote.

Remote checkpoints are downloaded into ``<cache>/<hash of URI>`` through a temporary sibling directory
and an atomic ``rename``, so a crash or a concurrent download never leaves a half-written model that a
later run would load. A URI is treated as immutable: publish a new version under a new path.
"""

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import fsspec

from musicrl.errors import InvalidRequest, ModelNotFound
from musicrl.models.uri import ModelURI, Scheme
from musicrl.toyworld.shipped import shipped_dir, shipped_names


logger = logging.getLogger(__name__)

_COMPLETE_MARKERS = ("config.json", "musicrl.json")  # a checkpoint has at least one of these


def default_cache_dir() -> Path:
    """``$MUSICRL_CACHE_DIR``, else ``~/.cache/musicrl``."""
    return Path(os.environ.get("MUSICRL_CACHE_DIR", Path.home() / ".cache" / "musicrl")).expanduser()


def resolve_local_dir(uri: ModelURI, cache_dir: Path | None = None) -> Path:
    """Return a local directory holding the checkpoint named by ``uri``.

    Args:
        uri: A parsed model URI (not ``tiny://``, which is built in memory; ``toy://`` is the package's own).
        cache_dir: Where remote checkpoints are cached (default :func:`default_cache_dir`).

    Returns:
        A directory with ``config.json`` and the weights.

    Raises:
        ModelNotFound: Nothing exists at the URI.
        InvalidRequest: A ``tiny://`` URI, which has no directory.
    """
    cache_dir = cache_dir or default_cache_dir()
    if uri.scheme is Scheme.TINY:
        raise InvalidRequest(f"{uri} is built in memory and has no directory")
    if uri.scheme is Scheme.LOCAL:
        return _checked_local(Path(uri.location), uri)
    if uri.scheme is Scheme.TOY:
        return _shipped(uri)
    if uri.scheme is Scheme.HF:
        return _download_hf(uri, cache_dir / "hf")
    return _download_fsspec(uri, cache_dir / "remote")


def _checked_local(path: Path, uri: ModelURI) -> Path:
    if not path.is_dir():
        raise ModelNotFound(f"no checkpoint directory at {path} (from {uri})")
    if not any((path / marker).exists() for marker in _COMPLETE_MARKERS):
        raise ModelNotFound(f"{path} holds no config.json or musicrl.json: it is not a save_pretrained checkpoint")
    return path


def _shipped(uri: ModelURI) -> Path:
    path = shipped_dir(uri.location)
    if not path.is_dir():
        raise ModelNotFound(
            f"{uri} is not shipped with this package; shipped: {', '.join(shipped_names()) or 'none'} "
            "(`musicrl toyworld train` rebuilds them)"
        )
    return _checked_local(path, uri)


def _download_hf(uri: ModelURI, cache_dir: Path) -> Path:
    # huggingface_hub keeps its own content-addressed cache with atomic moves; we only point it at ours.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id=uri.location, revision=uri.revision, cache_dir=str(cache_dir))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise ModelNotFound(f"cannot download {uri} from the Hugging Face Hub: {e}") from e
    return _checked_local(Path(path), uri)


def _download_fsspec(uri: ModelURI, cache_dir: Path) -> Path:
    final = cache_dir / hashlib.sha256(uri.location.encode()).hexdigest()[:32]
    if final.is_dir():
        return final
    fs, root = fsspec.core.url_to_fs(uri.location)
    if not fs.isdir(root):
        raise ModelNotFound(f"no checkpoint directory at {uri}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        logger.info("downloading %s into %s", uri, final)
        fs.get(root.rstrip("/") + "/", str(staging), recursive=True)
        _checked_local(staging, uri)
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race with another download: a real failure
                raise
            logger.info("another process finished downloading %s first", uri)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
