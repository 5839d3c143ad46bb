"""A listener with one hidden taste, brightness (spectral centroid), who uses the REST API as the page does.

A stand-in for the simulated-listener library until it exists: it fetches both clips of a comparison, plays
each to the end, and awards the trophy by Bradley–Terry on the centroid difference, so it prefers the brighter
clip most of the time, not always. The platform never sees the taste.
"""

import io
import math
import random

import numpy as np
import requests
import soundfile


def spectral_centroid_hz(wav: bytes) -> float:
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    spectrum = np.abs(np.fft.rfft(audio.reshape(-1)))
    frequencies = np.fft.rfftfreq(audio.size, 1.0 / rate)
    return float((spectrum * frequencies).sum() / max(spectrum.sum(), 1e-12))


class BrightListener:
    """One listener.

    Args:
        base_url: The gateway.
        headers: Its API key header.
        listener_id: Who votes (a listener the key vouches for).
        temperature_hz: Bradley–Terry temperature: P(A ≻ B) = σ((centroid A − centroid B) / T).
        seed: Seed of its noise.
    """

    def __init__(self, base_url: str, headers: dict[str, str], listener_id: str, temperature_hz: float, seed: int):
        self.base_url, self.headers, self.listener_id = base_url, headers, listener_id
        self.temperature_hz = temperature_hz
        self.rng = random.Random(seed)

    def judge(self, prompt: str) -> None:
        """Ask for a comparison, listen to both clips, vote."""
        comparison = self._post("/v1/comparisons", {"prompt": prompt})
        scores = {}
        for clip in comparison["clips"]:
            wav = requests.get(self.base_url + clip["audio_url"], headers=self.headers, timeout=30)
            wav.raise_for_status()
            scores[clip["slot"]] = spectral_centroid_hz(wav.content)
            played = {"clip_id": clip["id"], "listened_ms": math.ceil(clip["duration_s"] * 1000), "completed": True}
            self._post(f"/v1/comparisons/{comparison['id']}/playback", played)
        p_a = 1.0 / (1.0 + math.exp(-(scores["a"] - scores["b"]) / self.temperature_hz))
        choice = "a" if self.rng.random() < p_a else "b"
        self._post(f"/v1/comparisons/{comparison['id']}/preference", {"choice": choice})

    def _post(self, path: str, body: dict) -> dict:
        reply = requests.post(
            self.base_url + path, json={**body, "listener_id": self.listener_id}, headers=self.headers, timeout=60
        )
        reply.raise_for_status()
        return reply.json()
