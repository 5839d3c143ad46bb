"""Dependencies shared by the routes: the gateway state, the caller (with scope and rate checks), idempotency."""

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from musicrl.errors import Forbidden, Unauthorized
from musicrl.gateway.auth import SESSION_COOKIE, UI_KEY_ID, UI_SCOPES, Caller, Listener, Scope
from musicrl.gateway.idempotency import IdempotencyKey
from musicrl.gateway.state import GatewayState


PAGE_HEADER = "X-Requested-With"
PAGE_HEADER_VALUE = "musicrl-page"

# Declared for the OpenAPI document; the headers themselves are read below, so that a malformed one gets
# a precise message.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mrl_…`")
session_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description=f"A listening-page session (the page also sends `{PAGE_HEADER}: {PAGE_HEADER_VALUE}`).",
)


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway  # type: ignore[no-any-return]


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_caller(
    request: Request,
    state: StateDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    _session: Annotated[str | None, Security(session_scheme)],
) -> Caller:
    """Authenticate by API key, else by page session; then spend one token of the caller's rate."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        caller = state.keyring.authenticate(authorization)
    else:
        caller = _session_caller(request, state)
    state.limiter.check(caller.rate_key, caller.requests_per_minute)
    return caller


def _session_caller(request: Request, state: GatewayState) -> Caller:
    cookie = request.cookies.get(SESSION_COOKIE) if state.config.ui_sessions else None
    session_id = state.signer.session_from_cookie(cookie)  # a forged or expired cookie says so
    if session_id is None:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>' or open the listening page")
    # A cross-site form cannot set this header. Reads are exempt: an <audio> element cannot send it.
    if request.method not in ("GET", "HEAD") and request.headers.get(PAGE_HEADER) != PAGE_HEADER_VALUE:
        raise Forbidden(f"session requests must carry the header '{PAGE_HEADER}: {PAGE_HEADER_VALUE}'")
    return Caller(UI_KEY_ID, UI_SCOPES, state.config.ui_requests_per_minute, session_id=session_id)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require(scope: Scope) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that lets through only callers with ``scope``."""

    async def check(caller: CallerDep) -> Caller:
        caller.require(scope)
        return caller

    return check


GenerateCaller = Annotated[Caller, Depends(require(Scope.GENERATE))]
CompareCaller = Annotated[Caller, Depends(require(Scope.COMPARE))]
FeedbackCaller = Annotated[Caller, Depends(require(Scope.FEEDBACK))]
RateCaller = Annotated[Caller, Depends(require(Scope.RATE))]
AdminCaller = Annotated[Caller, Depends(require(Scope.ADMIN))]


async def get_idempotency_key(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Makes retries safe: the same key and body give the same reply and no second event.",
        ),
    ] = None,
) -> IdempotencyKey:
    """The request's Idempotency-Key with its fingerprint; routes bind it to the listener (``for_user``)."""
    fingerprint = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + await request.body()
    ).hexdigest()
    return IdempotencyKey(state.idempotency_kv, caller.key_id, idempotency_key, fingerprint)


IdempotencyDep = Annotated[IdempotencyKey, Depends(get_idempotency_key)]


def listener_of(state: GatewayState, caller: Caller, listener_id: str | None) -> Listener:
    """Who the request's feedback is recorded for: the page session, or (API key, ``listener_id``)."""
    listener = caller.session_id or listener_id or "default"
    return Listener(state.signer.pseudonym(caller.key_id, listener), page_session=caller.session_id is not None)
