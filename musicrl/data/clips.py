"""The clip store: generated audio and codes under one fsspec URL (a local dir, s3://, gs://, ...)."""

import io
import logging
import re

import fsspec
import numpy as np

from musicrl.errors import InvalidRequest


logger = logging.getLogger(__name__)

CLIP_ID = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex; anything else could walk out of the store's root


class ClipStore:
    """Write and read clips as ``<url>/<id[:2]>/<id>.wav`` and ``<id>.codes.npy``.

    The two-character fan-out keeps directory listings short on file systems with millions of clips.

    Args:
        url: Root of the store, any fsspec URL or local path.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def wav_uri(self, clip_id: str) -> str:
        """Where the clip's WAV lives. Raises InvalidRequest for a malformed id."""
        return f"{self.url}/{_checked(clip_id)[:2]}/{clip_id}.wav"

    def codes_uri(self, clip_id: str) -> str:
        """Where the clip's codes (int64 [K, T], NumPy .npy) live. Raises InvalidRequest for a malformed id."""
        return f"{self.url}/{_checked(clip_id)[:2]}/{clip_id}.codes.npy"

    def exists(self, clip_id: str) -> bool:
        """Whether the clip's WAV is in the store."""
        fs, path = fsspec.core.url_to_fs(self.wav_uri(clip_id))
        return bool(fs.exists(path))

    def put_wav(self, clip_id: str, wav: bytes) -> str:
        """Store the clip's WAV bytes and return its URI."""
        return self._put(self.wav_uri(clip_id), wav)

    def put_codes(self, clip_id: str, codes: np.ndarray) -> str:
        """Store the clip's codes and return their URI."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(codes, dtype=np.int64), allow_pickle=False)
        return self._put(self.codes_uri(clip_id), buffer.getvalue())

    def get_wav(self, clip_id: str) -> bytes:
        """The clip's WAV bytes. Raises FileNotFoundError for an unknown clip."""
        with fsspec.open(self.wav_uri(clip_id), "rb") as f:
            return f.read()

    def get_codes(self, clip_id: str) -> np.ndarray:
        """The clip's codes, int64 [K, T]. Raises FileNotFoundError for an unknown clip."""
        return np.load(io.BytesIO(self.get_codes_file(clip_id)), allow_pickle=False)

    def get_codes_file(self, clip_id: str) -> bytes:
        """The clip's codes as the bytes of a .npy file. Raises FileNotFoundError for an unknown clip."""
        with fsspec.open(self.codes_uri(clip_id), "rb") as f:
            return f.read()  # type: ignore[no-any-return]

    def _put(self, uri: str, data: bytes) -> str:
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)
        return uri


def _checked(clip_id: str) -> str:
    if not CLIP_ID.match(clip_id):
        raise InvalidRequest(f"malformed clip id {clip_id!r}: expected 32 lower-case hex characters")
    return clip_id
