"""The listening page at ``/``: static files, no build step; it opens an anonymous session cookie.

Opening a session is rate-limited per client address: each new cookie is a new listener with a fresh rate
limit, so unlimited minting would let a script skip the per-session limit.
"""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from musicrl.errors import Unauthorized
from musicrl.gateway.auth import SESSION_COOKIE
from musicrl.gateway.deps import StateDep


PAGE_DIR = Path(__file__).resolve().parents[1] / "page"

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page(request: Request, state: StateDep) -> FileResponse:
    response = FileResponse(PAGE_DIR / "index.html", media_type="text/html")
    if state.config.ui_sessions and not _has_session(request, state):
        limits = state.config.limits
        client = request.client.host if request.client else "unknown"
        state.limiter.check(f"session-mint:{client}", limits.session_mints_per_minute)
        _, cookie = state.signer.new_session()
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=limits.session_max_age_s,
            httponly=True,
            samesite="strict",
            secure=state.config.environment == "production",
        )
    return response


def _has_session(request: Request, state: StateDep) -> bool:
    try:
        return state.signer.session_from_cookie(request.cookies.get(SESSION_COOKIE)) is not None
    except Unauthorized:  # forged or expired: the page replaces it
        return False
