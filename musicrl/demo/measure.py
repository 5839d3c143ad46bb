"""The hidden taste's mean score of the policy the platform serves as stable, measured through the REST API.

The panel asks ``POST /v1/generations`` for clips of held-out prompts, as any API client would, and scores
what it hears. Every measurement uses the same seeds, so two policies are compared on common random numbers:
a clip of one is paired with the clip of the other from the same prompt and seed, and the difference of the
means gets a bootstrap interval over prompts.
"""

import time
from dataclasses import dataclass

import numpy as np

from musicrl.demo.listeners import RestPanel
from musicrl.errors import MusicRLError


POLL_S = 0.5
JOB_TIMEOUT_S = 600.0
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True, slots=True)
class TasteMeasurement:
    """The taste's scores of one policy's clips.

    Attributes:
        version: The stable version the gateway served them as.
        model_uri: Its checkpoint.
        scores: Taste score of each clip, float64 [P, C] (P prompts, C clips each).
    """

    version: str
    model_uri: str
    scores: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.scores.mean())


def measure_stable(
    panel: RestPanel, prompts: list[str], clips_per_prompt: int, duration_s: float, routing: dict, seed: int = 0
) -> TasteMeasurement:
    """Generate ``clips_per_prompt`` clips of each prompt from the stable policy and score them.

    Args:
        panel: The listeners (their taste scores the clips).
        prompts: Held-out prompts.
        clips_per_prompt: Clips (seeds) per prompt.
        duration_s: Clip length.
        routing: The gateway's routing table (``GET /v1/admin/routing``), naming the stable policy.
        seed: Prompt i's clips use seeds ``seed + i * clips_per_prompt`` onwards.
    """
    jobs = [
        panel.post_json(
            "/v1/generations",
            {
                "prompt": p,
                "num_clips": clips_per_prompt,
                "duration_s": duration_s,
                "seed": seed + i * clips_per_prompt,
            },
        )
        for i, p in enumerate(prompts)
    ]
    scores = np.zeros((len(prompts), clips_per_prompt))
    for i, (prompt, job) in enumerate(zip(prompts, jobs, strict=True)):
        done = _wait(panel, job["id"])
        for j, clip in enumerate(done["clips"]):
            scores[i, j] = panel.score_url(prompt, clip["audio_url"])
    stable = routing["stable"]
    return TasteMeasurement(version=stable["version"], model_uri=stable["model_uri"], scores=scores)


def _wait(panel: RestPanel, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = panel.get_json(f"/v1/generations/{job_id}?wait=true")
        if job["status"] == "done":
            return job
        if job["status"] == "failed":
            raise MusicRLError(f"generation {job_id} failed: {job.get('error')}")
        time.sleep(POLL_S)
    raise MusicRLError(f"generation {job_id} was not done after {JOB_TIMEOUT_S:.0f} s")


def difference_interval(
    before: TasteMeasurement, after: TasteMeasurement, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """after − before of the mean score, with a bootstrap interval over prompts (paired: same prompts and seeds).

    Returns:
        (difference, low, high).
    """
    if before.scores.shape[0] != after.scores.shape[0]:
        raise ValueError("both measurements must be of the same prompts")
    per_prompt = after.scores.mean(axis=1) - before.scores.mean(axis=1)  # [P]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_prompt), size=(BOOTSTRAP_DRAWS, len(per_prompt)))
    means = per_prompt[draws].mean(axis=1)
    tail = (1 - level) / 2
    return float(per_prompt.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
