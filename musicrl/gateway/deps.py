"""Dependencies shared by the routes: the gateway state, the caller (with scope and rate checks), idempotency."""

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.security import APIKeyCookie, HTTPBearer

from musicrl.errors import Forbidden, Unauthorized
from musicrl.gateway.auth import SESSION_COOKIE, UI_KEY_ID, UI_SCOPES, Caller, Listener, Scope
from musicrl.gateway.idempotency import IdempotencyKey
from musicrl.gateway.state import GatewayState


PAGE_HEADER = "X-Requested-With"
PAGE_HEADER_VALUE = "musicrl-page"

# Declared for the OpenAPI document only (see document_security); the headers themselves are read below, so
# that a malformed one gets a precise message.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mrl_…`")
session_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description=f"A listening-page session (the page also sends `{PAGE_HEADER}: {PAGE_HEADER_VALUE}`).",
)


async def get_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request
    return request.app.state.gateway  # type: ignore[no-any-return]


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_caller(
    request: Request,
) -> Caller:
    """Authenticate by API key, else by page session; then spend one token of the caller's rate."""
    state: GatewayState = request.app.state.gateway  # not StateDep: FastAPI solves a sub-dependency each time
    authorization = request.headers.get("authorization")
    if authorization is not None:
        caller = state.keyring.authenticate(authorization)
    else:
        caller = _session_caller(request, state)
    state.limiter.check(caller.rate_key, caller.requests_per_minute)
    return caller


def document_security(document: dict[str, Any]) -> dict[str, Any]:
    """Declare the credentials in the OpenAPI document: the schemes, on every operation that can answer 401.

    :func:`get_caller` reads the Authorization header and the session cookie itself. Declaring them as
    FastAPI ``Security`` parameters would document them too, but FastAPI then solves two more dependencies
    on every request, which cost the feedback path about a tenth of its throughput.
    """
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    for scheme in (bearer_scheme, session_scheme):
        schemes[scheme.scheme_name] = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)
    requirement: list[dict[str, list[str]]] = [{bearer_scheme.scheme_name: []}, {session_scheme.scheme_name: []}]
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):  # only a route that authenticates answers 401
                operation["security"] = requirement
    return document


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


def require(scope: Scope) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency that lets through only callers with ``scope``."""

    async def check(request: Request) -> Caller:
        caller = await get_caller(request)  # called, not declared: one dependency less to solve per request
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
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Makes retries safe: the same key and body give the same reply and no second event.",
        ),
    ] = None,
) -> IdempotencyKey:
    """The request's Idempotency-Key with its fingerprint; routes bind it to the caller and listener.

    It depends on neither the state nor the caller: FastAPI solves a dependency's sub-dependencies again for
    every dependant that names them, and this sits on the path of every feedback request.
    """
    fingerprint = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\n" + await request.body()
    ).hexdigest()
    return IdempotencyKey(request.app.state.gateway.idempotency_kv, idempotency_key, fingerprint)


IdempotencyDep = Annotated[IdempotencyKey, Depends(get_idempotency_key)]


def listener_of(state: GatewayState, caller: Caller, listener_id: str | None) -> Listener:
    """Who the request's feedback is recorded for: the page session, or (API key, ``listener_id``)."""
    listener = caller.session_id or listener_id or "default"
    return Listener(state.signer.pseudonym(caller.key_id, listener), page_session=caller.session_id is not None)
