"""Generation jobs: accepted at once, run in the background, tracked in the ``jobs`` KV bucket.

A job's record is written to JetStream-backed KV before the 202 goes out, so an accepted job is never
forgotten; its progress (running → done | failed) is written there too, so any gateway replica can answer
``GET /v1/generations/{id}``. A job that fails in any way — the generator, the clip store or NATS —
ends ``failed`` with its reason. A job whose gateway died mid-run stays ``running``: clients see no progress
and may resubmit with the same Idempotency-Key, which regenerates the same clips.
"""

import asyncio
import dataclasses
import datetime
import enum
import json
import logging
import time
from dataclasses import dataclass, field

import nats.errors
from nats.js.errors import InvalidKeyError, KeyNotFoundError
from nats.js.kv import KeyValue

from musicrl.config import SamplingParams
from musicrl.errors import MusicRLError, NotFound
from musicrl.gateway.capacity import GenerationSlots, Slot
from musicrl.gateway.clips import ClipRecorder
from musicrl.gateway.generator_client import GeneratorClient
from musicrl.gateway.idempotency import Idempotency
from musicrl.rollout.routing import RoutingStore


logger = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    """A generation job as stored in KV.

    Attributes:
        id: Job id.
        status: Where it is.
        prompt: The prompt.
        params: Sampling settings.
        seeds: One seed per clip.
        clip_ids: One id per clip (fixed when the job is accepted).
        policy_version: Version of the policy that runs it (set when it starts).
        error: Why it failed.
        created_at: ISO-8601 UTC.
        updated_at: ISO-8601 UTC.
    """

    id: str
    status: JobStatus
    prompt: str
    params: SamplingParams
    seeds: list[int]
    clip_ids: list[str]
    policy_version: str | None = None
    error: str | None = None
    created_at: str = field(default_factory=lambda: _now())
    updated_at: str = field(default_factory=lambda: _now())

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED)

    def to_wire(self) -> bytes:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return json.dumps(data).encode()

    @classmethod
    def from_wire(cls, raw: bytes) -> "Job":
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["status"] = JobStatus(data["status"])
        data["params"] = SamplingParams(**data["params"])
        return cls(**data)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class JobRunner:
    """Creates, runs and looks up generation jobs.

    Args:
        kv: The ``jobs`` bucket.
        routing: Where the stable policy is.
        generator: The V2 client.
        clips: Stores clips and publishes their events.
        slots: The bound on generations in flight, shared with comparisons.
    """

    def __init__(
        self,
        kv: KeyValue,
        routing: RoutingStore,
        generator: GeneratorClient,
        clips: ClipRecorder,
        slots: GenerationSlots,
    ) -> None:
        self.kv = kv
        self.routing = routing
        self.generator = generator
        self.clips = clips
        self.slots = slots
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, prompt: str, params: SamplingParams, num_clips: int, idem: Idempotency, seed: int | None = None
    ) -> Job:
        """Record a queued job in KV and start it in the background.

        Args:
            prompt: What to generate.
            params: Sampling settings.
            num_clips: Clips to generate.
            idem: The request's idempotency (ids, and the seeds when ``seed`` is None).
            seed: The first clip's seed (clip i gets ``seed + i`` mod 2^63); None draws them.

        Raises:
            Overloaded: The replica is at its bound of generations in flight (nothing was recorded).
        """
        slot = self.slots.take()  # held by the job until it ends
        try:
            job = await self._record_queued(prompt, params, num_clips, idem, seed)
        except BaseException:
            slot.release()
            raise
        task = asyncio.create_task(self._run(job, idem, slot))
        self._tasks.add(task)  # keep a reference: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return job

    async def _record_queued(
        self, prompt: str, params: SamplingParams, num_clips: int, idem: Idempotency, seed: int | None
    ) -> Job:
        job = Job(
            id=idem.new_id("job"),
            status=JobStatus.QUEUED,
            prompt=prompt,
            params=params,
            seeds=[idem.new_seed(f"seed/{i}") if seed is None else (seed + i) % 2**63 for i in range(num_clips)],
            clip_ids=[idem.new_id(f"clip/{i}").replace("-", "") for i in range(num_clips)],
        )
        await self.kv.put(job.id, job.to_wire())
        return job

    async def get(self, job_id: str) -> Job:
        """The job as stored. Raises NotFound for an unknown id."""
        try:
            entry = await self.kv.get(job_id)
        except (KeyNotFoundError, InvalidKeyError, ValueError) as e:
            raise NotFound(f"no generation job {job_id!r}") from e
        return Job.from_wire(entry.value or b"{}")

    async def wait(self, job_id: str, timeout_s: float) -> Job:
        """The job once finished, or as it is after ``timeout_s``.

        Watches the job's KV key (a push from NATS on every change, whichever replica runs the job)
        instead of polling it.
        """
        deadline = time.monotonic() + timeout_s
        job = await self.get(job_id)
        if job.finished:
            return job
        watcher = await self.kv.watch(job_id)
        try:
            while not job.finished and (remaining := deadline - time.monotonic()) > 0:
                try:
                    entry = await watcher.updates(timeout=remaining)
                except nats.errors.TimeoutError:
                    break
                if entry is not None and entry.value:  # None marks the end of the initial values
                    job = Job.from_wire(entry.value)
        finally:
            await watcher.stop()
        return job

    async def close(self) -> None:
        """Wait for running jobs (called at shutdown, within the grace period)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)

    async def _run(self, job: Job, idem: Idempotency, slot: Slot) -> None:
        try:
            job = await self._generate(job, idem)
        except MusicRLError as e:
            logger.warning("generation job %s failed: %s", job.id, e)
            job = dataclasses.replace(job, status=JobStatus.FAILED, error=str(e), updated_at=_now())
        except nats.errors.Error as e:
            logger.warning("generation job %s failed: NATS error %s", job.id, type(e).__name__)
            reason = f"the event bus is unavailable ({type(e).__name__}); retry with the same Idempotency-Key"
            job = dataclasses.replace(job, status=JobStatus.FAILED, error=reason, updated_at=_now())
        except Exception as e:  # any failure must end the job, never leave it "running" forever
            logger.exception("generation job %s failed unexpectedly", job.id)
            reason = f"internal error ({type(e).__name__}); retry with the same Idempotency-Key"
            job = dataclasses.replace(job, status=JobStatus.FAILED, error=reason, updated_at=_now())
        finally:
            slot.release()
        try:
            await self.kv.put(job.id, job.to_wire())
        except nats.errors.Error:
            logger.exception("could not record the end of generation job %s (%s)", job.id, job.status.value)

    async def _generate(self, job: Job, idem: Idempotency) -> Job:
        endpoint = (await self.routing.get()).stable
        job = dataclasses.replace(job, status=JobStatus.RUNNING, policy_version=endpoint.version, updated_at=_now())
        await self.kv.put(job.id, job.to_wire())
        started = time.monotonic()
        generated = await self.generator.generate(endpoint, [job.prompt] * len(job.seeds), job.seeds, job.params)
        latency_ms = (time.monotonic() - started) * 1000
        for index, (clip_id, clip) in enumerate(zip(job.clip_ids, generated, strict=True)):
            await self.clips.save(
                clip_id, clip, job.prompt, endpoint, job.params, latency_ms, idem.new_id(f"event/clip/{index}")
            )
        return dataclasses.replace(job, status=JobStatus.DONE, updated_at=_now())
