"""Parse model URIs: the one way every component names a model (DESIGN.md §4)."""

import enum
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from musicrl.errors import InvalidRequest


class Scheme(enum.StrEnum):
    """Where a model's weights come from."""

    TINY = "tiny"  # built from a small config with seeded random weights, offline
    TOY = "toy"  # trained on the procedural toy world and shipped in the package (musicrl.toyworld)
    HF = "hf"  # a Hugging Face Hub repository
    LOCAL = "file"  # a directory on this machine
    REMOTE = "remote"  # any other fsspec protocol: s3, gs, az, memory, ...


@dataclass(frozen=True, slots=True)
class ModelURI:
    """A parsed model URI.

    Attributes:
        raw: The URI as given.
        scheme: Where the weights come from.
        location: ``tiny`` and ``toy``: the model kind; ``hf``: ``org/name``; ``file``: an absolute path;
            ``remote``: the full fsspec URL.
        revision: ``hf`` only: a branch, tag or commit after ``@``.
        params: ``tiny`` only: the query parameters (``seed`` and config overrides).
    """

    raw: str
    scheme: Scheme
    location: str
    revision: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, uri: str) -> "ModelURI":
        """Parse ``tiny://kind?seed=N``, ``toy://kind``, ``hf://org/name[@rev]``, ``file:///dir``, a path, or ``proto://…``.

        Args:
            uri: The model URI.

        Returns:
            The parsed URI.

        Raises:
            InvalidRequest: The URI is empty, malformed, or uses a protocol fsspec does not know.
        """
        if not uri or not uri.strip():
            raise InvalidRequest("a model URI is required, for example tiny://musicgen?seed=0")
        uri = uri.strip()
        if "://" not in uri:
            return cls(raw=uri, scheme=Scheme.LOCAL, location=str(Path(uri).expanduser().resolve()))
        protocol, rest = uri.split("://", 1)
        protocol = protocol.lower()  # schemes are case-insensitive (RFC 3986 §3.1)
        if protocol == "tiny":
            return _parse_tiny(uri)
        if protocol == "toy":
            return _parse_toy(uri)
        if protocol == "hf":
            return _parse_hf(uri, rest)
        if protocol in ("file", "local"):
            return _parse_file(uri)
        if protocol not in fsspec.available_protocols():
            raise InvalidRequest(
                f"unknown model URI scheme {protocol!r} in {uri!r}; use tiny://, toy://, hf://, file://, a path, "
                "or an fsspec protocol such as s3:// or gs://"
            )
        return cls(raw=uri, scheme=Scheme.REMOTE, location=f"{protocol}://{rest}")

    def __str__(self) -> str:
        return self.raw


def _parse_tiny(uri: str) -> ModelURI:
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc:
        raise InvalidRequest(f"tiny URI {uri!r} names no model kind; write tiny://musicgen?seed=0")
    params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    return ModelURI(raw=uri, scheme=Scheme.TINY, location=parts.netloc, params=params)


def _parse_toy(uri: str) -> ModelURI:
    parts = urllib.parse.urlsplit(uri)
    if not parts.netloc or parts.path.strip("/") or parts.query:
        raise InvalidRequest(f"toy URI {uri!r} must name a shipped model only, for example toy://musicgen")
    return ModelURI(raw=uri, scheme=Scheme.TOY, location=parts.netloc.lower())


def _parse_file(uri: str) -> ModelURI:
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidRequest(f"file URI {uri!r} names host {parts.netloc!r}; write file:///absolute/path")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidRequest(f"file URI {uri!r} has no absolute path; write file:///absolute/path")
    return ModelURI(raw=uri, scheme=Scheme.LOCAL, location=str(Path(path).resolve()))


def _parse_hf(uri: str, rest: str) -> ModelURI:
    repo_id, _, revision = rest.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InvalidRequest(f"Hugging Face URI {uri!r} must look like hf://org/name or hf://org/name@revision")
    return ModelURI(raw=uri, scheme=Scheme.HF, location=repo_id, revision=revision or None)
