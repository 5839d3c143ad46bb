"""Clip files: ``GET /v1/clips/{id}.wav`` and ``GET /v1/clips/{id}/codes``."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from musicrl.errors import NotFound
from musicrl.gateway.deps import CallerDep, StateDep
from musicrl.gateway.routes import AUTHENTICATED, errors
from musicrl.gateway.schemas import CLIP_ID_PATTERN


router = APIRouter(prefix="/v1/clips", tags=["clips"])
ClipId = Annotated[str, Path(pattern=CLIP_ID_PATTERN, description="Clip id (32 hex characters).")]
IMMUTABLE = {"Cache-Control": "private, max-age=31536000, immutable"}  # a clip never changes once written


@router.get(
    "/{clip_id}.wav",
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}}, "description": "The clip."}, **errors(*AUTHENTICATED, 404, 422)},
    summary="A clip as a WAV file",
)
async def read_clip_audio(clip_id: ClipId, state: StateDep, caller: CallerDep) -> Response:
    try:
        wav = await asyncio.to_thread(state.clip_store.get_wav, clip_id)
    except FileNotFoundError as e:
        raise NotFound(f"no clip {clip_id!r}") from e
    return Response(content=wav, media_type="audio/wav", headers=IMMUTABLE)


@router.get(
    "/{clip_id}/codes",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "int64 [K, T] as a NumPy .npy file."},
        **errors(*AUTHENTICATED, 404, 422),
    },
    summary="A clip's audio tokens",
)
async def read_clip_codes(clip_id: ClipId, state: StateDep, caller: CallerDep) -> Response:
    try:
        data = await asyncio.to_thread(state.clip_store.get_codes_file, clip_id)
    except FileNotFoundError as e:
        raise NotFound(f"no clip {clip_id!r}") from e
    return Response(content=data, media_type="application/octet-stream", headers=IMMUTABLE)
