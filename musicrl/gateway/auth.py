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
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicrl.errors import Forbidden, InvalidRequest, Unauthorized


logger = logging.getLogger(__name__)

API_KEY_PREFIX = "mrl_"
SESSION_COOKIE = "musicrl_session"
UI_KEY_ID = "ui"


class Scope(enum.StrEnum):
    """What a caller may do."""

    GENERATE = "generate"  # generation jobs (clips to keep); implies compare
    COMPARE = "compare"  # A/B comparisons (clips to judge)
    FEEDBACK = "feedback"  # playback and preferences
    RATE = "rate"  # quality ratings
    ADMIN = "admin"  # the routing table


# An anonymous page visitor may judge clips, not order free generations.
UI_SCOPES = frozenset({Scope.COMPARE, Scope.FEEDBACK, Scope.RATE})
IMPLIED_SCOPES = {Scope.GENERATE: frozenset({Scope.COMPARE})}  # keys minted before compare existed keep working


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
        """Raise :class:`Forbidden` unless the caller has ``scope`` (or a scope that implies it)."""
        granted = self.scopes.union(*(IMPLIED_SCOPES.get(s, frozenset()) for s in self.scopes))
        if scope not in granted:
            raise Forbidden(f"this {'session' if self.session_id else 'API key'} lacks the {scope.value!r} scope")

    @property
    def rate_key(self) -> str:
        """The bucket its requests are counted in."""
        return f"session:{self.session_id}" if self.session_id else f"key:{self.key_id}"


@dataclass(frozen=True, slots=True)
class Listener:
    """Who feedback is recorded for.

    Attributes:
        user_id: The pseudonym recorded in events (32 hex characters).
        page_session: Whether it is an anonymous listening-page session rather than a listener that an
            API-key client vouches for.
    """

    user_id: str
    page_session: bool


class KeyRing:
    """The configured API keys, looked up by hash in constant time per key.

    Args:
        keys: The keys.
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = {k.sha256: k for k in keys}

    @classmethod
    def from_file(cls, path: str | None) -> "KeyRing":
        """Load a JSON list of key entries; None gives an empty ring.

        Raises:
            InvalidRequest: The file cannot be read or holds an invalid entry.
        """
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


class KeyFile:
    """The keys file, re-read when it changes, so that a key minted with ``musicrl apikey new`` (or a
    rotated Kubernetes Secret) works without a restart.

    The file's modification time and size are checked at most every ``check_interval_s``; a file that no
    longer parses keeps the last good keys and logs why, so a half-edited file never locks everyone out.

    Args:
        path: The keys file, or None for no API keys.
        check_interval_s: Least time between two checks of the file.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self, path: str | None, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._ring = KeyRing.from_file(path)  # a bad file at start-up is a configuration error: raise
        self._checked_at = clock()

    @property
    def ring(self) -> KeyRing:
        """The current keys (re-read first if the file changed since the last check)."""
        now = self.clock()
        if self.path is not None and now - self._checked_at >= self.check_interval_s:
            with self._lock:
                self._checked_at = now
                self._reload_if_changed()
        return self._ring

    def authenticate(self, authorization: str | None) -> Caller:
        """See :meth:`KeyRing.authenticate`, on the current keys."""
        return self.ring.authenticate(authorization)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            ring = KeyRing.from_file(self.path)
        except InvalidRequest as e:
            logger.error("keeping the previous %d API keys: %s", len(self._ring.keys), e)
            return
        self._stamp, self._ring = stamp, ring
        logger.info("reloaded %d API keys from %s", len(ring.keys), self.path)


class Signer:
    """Derives purpose-specific keys from the one secret: session signatures and user pseudonyms.

    A session cookie is ``<session id>.<issued at, Unix seconds>.<signature of both>``: the signature
    covers the issue time, so a cookie cannot be made to live longer than ``session_max_age_s``.

    Args:
        secret_key: The gateway's secret.
        session_max_age_s: How long a session cookie is accepted after it was issued.
        clock: Wall-clock seconds (injectable for tests).
    """

    def __init__(
        self, secret_key: str, session_max_age_s: int = 30 * 24 * 3600, clock: Callable[[], float] = time.time
    ) -> None:
        self.secret_key = secret_key
        self.session_max_age_s = session_max_age_s
        self.clock = clock

    def _mac(self, purpose: str, message: str) -> bytes:
        subkey = hmac.new(self.secret_key.encode(), purpose.encode(), hashlib.sha256).digest()
        return hmac.new(subkey, message.encode(), hashlib.sha256).digest()

    def new_session(self) -> tuple[str, str]:
        """A fresh session id and the signed cookie value that carries it with its issue time."""
        session_id = secrets.token_urlsafe(16)
        issued = f"{session_id}.{int(self.clock())}"
        return session_id, f"{issued}.{self._b64(self._mac('session', issued))}"

    def session_from_cookie(self, cookie: str | None) -> str | None:
        """The session id of a cookie, or None when there is none.

        Raises:
            Unauthorized: The cookie is forged, malformed or expired (the message says which).
        """
        if not cookie:
            return None
        issued, _, signature = cookie.rpartition(".")
        session_id, _, issued_at = issued.rpartition(".")
        if not (session_id and issued_at.isdigit()):
            raise Unauthorized("the session cookie is malformed; reload the listening page for a new one")
        if not hmac.compare_digest(signature.encode(), self._b64(self._mac("session", issued)).encode()):
            raise Unauthorized("the session cookie's signature is invalid (forged or from another gateway)")
        if self.clock() - int(issued_at) > self.session_max_age_s:
            raise Unauthorized("the session has expired; reload the listening page for a new one")
        return session_id

    def pseudonym(self, key_id: str, listener_id: str) -> str:
        """A stable, non-reversible user id for (key, listener): 32 hex characters."""
        return self._mac("user", f"{key_id}\x00{listener_id}").hex()[:32]

    @staticmethod
    def _b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
