"""Simulated listeners who use the platform's REST API exactly as the listening page does.

A panel member asks for a comparison, plays both clips to the end (reporting each playback), votes with the
simulated-listener library's Bradley–Terry panel (:class:`musicrl.sim.listener.Listener`) on its hidden
taste, and now and then rates a clip. The platform sees requests, never the taste.

The taste's spread (the listener's unit of Δ) is learned from what the panel hears: every comparison is of
two clips of one prompt, so mean((s_A − s_B)²) / 2 estimates the within-prompt variance that
:meth:`Listener.calibrated` would measure over a pool. :meth:`RestPanel.freeze_scale` fixes it once the
panel has heard the stable policy, so the canary is judged in the units the preferences were given in.
"""

import io
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import requests
import soundfile

from musicrl.errors import MusicRLError
from musicrl.sim.listener import Listener, ListenerConfig
from musicrl.sim.tastes import CodeShare, HeardClip, Taste


logger = logging.getLogger(__name__)

TIMEOUT_S = 120.0  # a comparison is generated inside its request; a busy CPU generator takes seconds
MAX_RETRIES = 4  # 1 + 2 + 4 + 8 s: a promotion's routing switch, or a generator restarting
RETRIED = (429, 503)
RATING_SPREAD = 1.0  # a clip one taste-spread above the panel's mean is rated one star above 3


@dataclass(slots=True)
class Tally:
    """What the panel did, for the report."""

    comparisons: int = 0
    votes: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0, "tie": 0})
    ratings: int = 0
    scores: list[float] = field(default_factory=list)  # the taste's score of every clip heard


class RestPanel:
    """A panel of simulated listeners on one hidden taste, talking to the gateway.

    Args:
        base_url: The gateway, e.g. ``http://127.0.0.1:8000``.
        token: An API key with the generate, feedback and rate scopes.
        taste: What the panel likes.
        config: How it votes (temperature in taste spreads, faults, panel size).
        rating_share: Share of heard clips a listener also rates (1–5).
        seed: Seed of every random draw (member, vote, rating).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        taste: Taste,
        config: ListenerConfig,
        rating_share: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.taste, self.config, self.rating_share = taste, config, rating_share
        self.rng = np.random.default_rng([seed, 0x11573])
        self.tally = Tally()
        self._headers = {"Authorization": f"Bearer {token}"}
        self._squared_differences: list[float] = []
        self._frozen_scale: float | None = None
        self._lock = threading.Lock()  # judge() may run from several threads: one rng, one tally
        self._session = requests.Session()

    @property
    def scale(self) -> float:
        """The taste's within-prompt spread in use (frozen, or estimated from what was heard so far)."""
        if self._frozen_scale is not None:
            return self._frozen_scale
        if not self._squared_differences:
            return 1.0
        return max(math.sqrt(float(np.mean(self._squared_differences)) / 2.0), 1e-9)

    def freeze_scale(self) -> float:
        """Fix the spread at its current estimate; later votes use it whatever the clips."""
        self._frozen_scale = self.scale
        return self._frozen_scale

    def member(self, index: int) -> str:
        """The listener id of panel member ``index``."""
        return f"sim-listener-{index:03d}"

    def judge(self, prompt: str) -> tuple[str, str]:
        """One panel member asks for a comparison of ``prompt``, plays both clips, votes, maybe rates.

        An inattentive member (the listener config's share) votes without playing anything, as such people
        do on the page: no playback is reported, so the snapshot's listening rule can drop the vote.

        Returns:
            The comparison's id and the choice: ``a``, ``b`` or ``tie``.
        """
        with self._lock:
            user = int(self.rng.integers(0, self.config.panel_size))
        member = self.member(user)
        comparison = self.post_json("/v1/comparisons", {"prompt": prompt, "listener_id": member})
        clips = {clip["slot"]: clip for clip in comparison["clips"]}
        listens = user >= self.config.inattentive_members
        heard = {slot: self._listen(prompt, clip) for slot, clip in clips.items()} if listens else {"a": 0.0, "b": 0.0}
        with self._lock:
            if listens and self._frozen_scale is None:
                self._squared_differences.append((heard["a"] - heard["b"]) ** 2)
            listener = Listener(self.taste, self.config, self.scale)
            choice = str(
                listener.vote(np.array([heard["a"]]), np.array([heard["b"]]), self.rng, np.array([user])).choices[0]
            )
            stars = self._ratings(clips, heard) if listens else []
            self.tally.comparisons += 1
            self.tally.votes[choice] += 1
            if listens:
                self.tally.scores += [heard["a"], heard["b"]]
        for clip in clips.values() if listens else ():
            played = {"clip_id": clip["id"], "listened_ms": math.ceil(clip["duration_s"] * 1000), "completed": True}
            self.post_json(f"/v1/comparisons/{comparison['id']}/playback", {**played, "listener_id": member})
        self.post_json(f"/v1/comparisons/{comparison['id']}/preference", {"choice": choice, "listener_id": member})
        for clip_id, score in stars:
            self.post_json("/v1/ratings", {"clip_id": clip_id, "score": score, "listener_id": member})
        with self._lock:
            self.tally.ratings += len(stars)
        return comparison["id"], choice

    def _ratings(self, clips: dict[str, dict], heard: dict[str, float]) -> list[tuple[str, int]]:
        """Stars for the share of clips this listener rates: 3 at the panel's mean taste, ±1 per spread."""
        center = float(np.mean(self.tally.scores)) if self.tally.scores else float(np.mean(list(heard.values())))
        return [
            (clip["id"], int(np.clip(round(3 + (heard[slot] - center) / (RATING_SPREAD * self.scale)), 1, 5)))
            for slot, clip in clips.items()
            if self.rng.random() < self.rating_share
        ]

    def score_url(self, prompt: str, audio_url: str, codes_url: str | None = None) -> float:
        """The taste's score of one clip the gateway serves (for measuring a policy, not for voting)."""
        return self.taste.score(self._heard(prompt, audio_url, codes_url))

    def _listen(self, prompt: str, clip: dict) -> float:
        codes_url = f"/v1/clips/{clip['id']}/codes" if isinstance(self.taste, CodeShare) else None
        return self.taste.score(self._heard(prompt, clip["audio_url"], codes_url))

    def _heard(self, prompt: str, audio_url: str, codes_url: str | None) -> HeardClip:
        wav = self.get_bytes(audio_url)
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        # only the code-level taste needs the tokens; the page never fetches them, so nor does anyone else
        codes = np.load(io.BytesIO(self.get_bytes(codes_url))) if codes_url else np.zeros((0, 0), np.int64)
        return HeardClip(prompt=prompt, codes=codes, audio=audio.reshape(-1), sample_rate=int(rate))

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` of the gateway as this panel's API client; the reply's body."""
        return self._send("GET", path).content

    def get_json(self, path: str) -> dict:
        """GET ``path`` of the gateway as this panel's API client; the reply's JSON."""
        return self._send("GET", path).json()

    def post_json(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``path`` as this panel's API client, retried as the API asks; the reply's JSON."""
        return self._send("POST", path, body).json()

    def _send(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        # As a well-behaved client does: a 429 or 503 says "retry later", and one Idempotency-Key across the
        # retries makes a POST that did land count once.
        headers = dict(self._headers)
        if method == "POST":
            headers["Idempotency-Key"] = uuid.uuid4().hex
        for attempt in range(MAX_RETRIES + 1):
            reply = self._session.request(method, self.base_url + path, json=body, headers=headers, timeout=TIMEOUT_S)
            if reply.status_code not in RETRIED or attempt == MAX_RETRIES:
                break
            wait = _retry_after(reply) * 2**attempt
            logger.info("%s %s answered %d; retrying in %.1f s", method, path, reply.status_code, wait)
            time.sleep(wait)
        _raise_for(reply, path)
        return reply


def _retry_after(reply: requests.Response) -> float:
    try:
        return min(max(float(reply.headers.get("Retry-After", 1.0)), 0.1), 10.0)
    except ValueError:
        return 1.0


def _raise_for(reply: requests.Response, path: str) -> None:
    if reply.status_code >= 400:
        try:
            detail = reply.json().get("detail", reply.text)
        except ValueError:
            detail = reply.text
        raise MusicRLError(f"{reply.request.method} {path} answered {reply.status_code}: {detail}")
