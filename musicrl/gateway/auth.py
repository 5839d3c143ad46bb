"""Callers: API keys (stored hashed, with scopes and a rate), UI sessions, pseudonymous user ids.

API keys are random 256-bit tokens, so a plain SHA-256 of the key is a safe verifier (no dictionary to
attack) and lets the key list live in a Kubernetes Secret without holding the keys themselves. UI sessions
are signed cookies. User ids in events are HMACs of (key id, listener id): stable per listener, not
reversible without the secret.
"""

import base64
import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicrl.errors import Forbidden, InvalidRequest, Unauthorized


API_KEY_PREFIX = "mrl_"
SESSION_COOKIE = "musicrl_session"
UI_KEY_ID = "ui"


class Scope(enum.StrEnum):
    """What a caller may do."""

    GENERATE = "generate"  # generation jobs and comparisons
    FEEDBACK = "feedback"  # playback and preferences
    RATE = "rate"  # quality ratings
    ADMIN = "admin"  # the routing table


UI_SCOPES = frozenset({Scope.GENERATE, Scope.FEEDBACK, Scope.RATE})


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key as configured: its id, the SHA-256 of the key, scopes and rate.

    Attributes:
        id: Public identifier (appears in logs and metrics, never the key).
        sha256: Hex SHA-256 of the key.
        scopes: What it may do.
        requests_per_minute: Its rate limit.
    """

    id: str
    sha256: str
    scopes: frozenset[Scope]
    requests_per_minute: int = 600

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "ApiKey":
        """Read one entry of the keys file; unknown fields are ignored.

        Raises:
            InvalidRequest: A missing field, an unknown scope or a malformed hash.
        """
        try:
            key_id, digest, scopes = str(data["id"]), str(data["sha256"]).lower(), data["scopes"]
            parsed_scopes = frozenset(Scope(s) for s in scopes)
        except KeyError as e:
            raise InvalidRequest(f"API key entry {dict(data).get('id', '?')!r} lacks field {e}") from e
        except ValueError as e:
            raise InvalidRequest(f"API key {data.get('id')!r}: {e}; scopes are {[s.value for s in Scope]}") from e
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidRequest(f"API key {key_id!r}: sha256 must be 64 hex characters")
        rate = int(data.get("requests_per_minute", 600))
        if rate < 1:
            raise InvalidRequest(f"API key {key_id!r}: requests_per_minute must be >= 1")
        return cls(key_id, digest, parsed_scopes, rate)

    def to_wire(self) -> dict[str, Any]:
        """The keys-file entry."""
        return {
            "id": self.id,
            "sha256": self.sha256,
            "scopes": sorted(s.value for s in self.scopes),
            "requests_per_minute": self.requests_per_minute,
        }


def new_api_key(key_id: str, scopes: Iterable[Scope], requests_per_minute: int = 600) -> tuple[str, ApiKey]:
    """Mint a key: returns the secret token (shown once) and its configuration entry."""
    token = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return token, ApiKey(key_id, hash_key(token), frozenset(scopes), requests_per_minute)


def hash_key(token: str) -> str:
    """Hex SHA-256 of an API key."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling.

    Attributes:
        key_id: The API key id, or ``ui`` for a page session.
        scopes: What it may do.
        requests_per_minute: Its rate limit.
        session_id: The UI session, if any (it is also the listener id).
    """

    key_id: str
    scopes: frozenset[Scope]
    requests_per_minute: int
    session_id: str | None = None

    def require(self, scope: Scope) -> None:
        """Raise :class:`Forbidden` unless the caller has ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this {'session' if self.session_id else 'API key'} lacks the {scope.value!r} scope")

    @property
    def rate_key(self) -> str:
        """The bucket its requests are counted in."""
        return f"session:{self.session_id}" if self.session_id else f"key:{self.key_id}"


class KeyRing:
    """The configured API keys, looked up by hash in constant time per key.

    Args:
        keys: The keys.
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = {k.sha256: k for k in keys}

    @classmethod
    def from_file(cls, path: str | None) -> "KeyRing":
        """Load a JSON list of key entries; None gives an empty ring."""
        if path is None:
            return cls([])
        try:
            entries = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidRequest(f"cannot read API keys from {path}: {e}") from e
        if not isinstance(entries, list):
            raise InvalidRequest(f"{path} must hold a JSON list of API key entries")
        return cls(ApiKey.from_wire(entry) for entry in entries)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an ``Authorization: Bearer <key>`` header.

        Raises:
            Unauthorized: No header, a malformed one, or an unknown key.
        """
        if not authorization:
            raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: expected 'Bearer <API key>'")
        digest = hash_key(token.strip())
        key = next((k for h, k in self.keys.items() if hmac.compare_digest(h, digest)), None)
        if key is None:
            raise Unauthorized("unknown API key")
        return Caller(key.id, key.scopes, key.requests_per_minute)


class Signer:
    """Derives purpose-specific keys from the one secret: session signatures and user pseudonyms.

    Args:
        secret_key: The gateway's secret.
    """

    def __init__(self, secret_key: str) -> None:
        self.secret_key = secret_key

    def _mac(self, purpose: str, message: str) -> bytes:
        subkey = hmac.new(self.secret_key.encode(), purpose.encode(), hashlib.sha256).digest()
        return hmac.new(subkey, message.encode(), hashlib.sha256).digest()

    def new_session(self) -> tuple[str, str]:
        """A fresh session id and the signed cookie value that carries it."""
        session_id = secrets.token_urlsafe(16)
        return session_id, f"{session_id}.{self._b64(self._mac('session', session_id))}"

    def session_from_cookie(self, cookie: str | None) -> str | None:
        """The session id of a validly signed cookie, else None."""
        if not cookie or "." not in cookie:
            return None
        session_id, _, signature = cookie.rpartition(".")
        expected = self._b64(self._mac("session", session_id))
        return session_id if hmac.compare_digest(signature, expected) else None

    def pseudonym(self, key_id: str, listener_id: str) -> str:
        """A stable, non-reversible user id for (key, listener): 32 hex characters."""
        return self._mac("user", f"{key_id}\x00{listener_id}").hex()[:32]

    @staticmethod
    def _b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
