"""Generation jobs: ``POST /v1/generations`` (202) and ``GET /v1/generations/{id}``."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from musicrl.config import SamplingParams
from musicrl.gateway.deps import GenerateCaller, IdempotencyDep, StateDep, listener_of
from musicrl.gateway.jobs import Job, JobStatus
from musicrl.gateway.limits import check_limits
from musicrl.gateway.routes import AUTHENTICATED, WITH_BODY, errors
from musicrl.gateway.schemas import UUID_PATTERN, ClipPublic, GenerationCreate, GenerationPublic


router = APIRouter(prefix="/v1/generations", tags=["generations"])
DEFAULT_DURATION_S = 10.0  # long enough to hear where the music goes
SUBMIT_LEASE_S = 30.0  # recording a queued job takes milliseconds; the generation itself runs after the reply


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(400, *AUTHENTICATED, 409, *WITH_BODY, 503),
    summary="Start generating clips for a prompt",
)
async def create_generation(
    generation_in: GenerationCreate, state: StateDep, caller: GenerateCaller, idem: IdempotencyDep, response: Response
) -> GenerationPublic:
    limits = state.config.limits
    check_limits(generation_in, limits)
    params = SamplingParams(
        duration_s=generation_in.duration_s or min(DEFAULT_DURATION_S, limits.max_duration_s),
        temperature=generation_in.temperature,
        top_k=generation_in.top_k,
        guidance_scale=generation_in.guidance_scale,
    )
    scoped = idem.for_user(caller.key_id, listener_of(state, caller, generation_in.listener_id).user_id)

    async def submit() -> GenerationPublic:
        job = await state.jobs.submit(
            generation_in.prompt, params, generation_in.num_clips, scoped, seed=generation_in.seed
        )
        return generation_public(job)

    generation = await scoped.run(submit, GenerationPublic, SUBMIT_LEASE_S, response)
    response.headers["Location"] = f"/v1/generations/{generation.id}"
    return generation


@router.get(
    "/{generation_id}", responses=errors(*AUTHENTICATED, 404, 422, 503), summary="A generation job and its clips"
)
async def read_generation(
    generation_id: Annotated[str, Path(pattern=UUID_PATTERN, description="Generation job id.")],
    state: StateDep,
    caller: GenerateCaller,
    wait: Annotated[bool, Query(description="Block until the job is done or failed (bounded by the server).")] = False,
) -> GenerationPublic:
    if wait:
        job = await state.jobs.wait(generation_id, state.config.limits.wait_timeout_s)
    else:
        job = await state.jobs.get(generation_id)
    return generation_public(job)


def generation_public(job: Job) -> GenerationPublic:
    clips = [clip_public(c) for c in job.clip_ids] if job.status is JobStatus.DONE else []
    return GenerationPublic(
        id=job.id,
        status=job.status.value,
        prompt=job.prompt,
        clips=clips,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def clip_public(clip_id: str) -> ClipPublic:
    return ClipPublic(id=clip_id, audio_url=f"/v1/clips/{clip_id}.wav", codes_url=f"/v1/clips/{clip_id}/codes")
