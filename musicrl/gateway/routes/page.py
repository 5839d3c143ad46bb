"""The listening page at ``/``: static files, no build step; it opens an anonymous session cookie."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from musicrl.gateway.auth import SESSION_COOKIE
from musicrl.gateway.deps import StateDep


PAGE_DIR = Path(__file__).resolve().parents[1] / "page"
SESSION_MAX_AGE_S = 30 * 24 * 3600  # a listener keeps one pseudonymous id for a month

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def page(request: Request, state: StateDep) -> FileResponse:
    response = FileResponse(PAGE_DIR / "index.html", media_type="text/html")
    has_session = state.signer.session_from_cookie(request.cookies.get(SESSION_COOKIE)) is not None
    if state.config.ui_sessions and not has_session:
        _, cookie = state.signer.new_session()
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=state.config.environment == "production",
        )
    return response
