"""Judge the toy models from outside: do the probes hear what the prompt asked, and does sampling matter?

Generation goes through the platform's own engine (:class:`musicrl.models.engine.GenerationEngine`) with
the platform's sampling settings, so these figures describe what the generator serves.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from musicrl.config import SamplingParams
from musicrl.models.engine import GenerationEngine
from musicrl.toyworld.captions import read_prompt
from musicrl.toyworld.corpus import Example, examples
from musicrl.toyworld.probes import agreement, measure, spectral_entropy, spectral_flux
from musicrl.toyworld.world import ATTRIBUTE_TYPES, CLIP_S


PROBED = ("pitch", "tempo", "timbre", "loudness")  # what the probes can judge (texture they cannot)
CHANCE = {"pitch": 1 / 3, "tempo": 1 / 3, "timbre": 1 / 2, "loudness": 1 / 2}


UNHEARD = "unheard"  # the probes could not judge the attribute (silence): not counted as an agreement or a miss


@dataclass(frozen=True, slots=True)
class Adherence:
    """Per attribute: how often the probes heard what the prompts asked for, out of how many asks.

    ``confusion[attribute][asked][heard]`` counts the clips asked for one class and heard as another (or
    ``unheard``): which class a policy fails, and what it plays instead, which the agreement alone hides.
    """

    agreed: Mapping[str, float]
    asked: Mapping[str, int]
    confusion: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)

    def mean(self) -> float:
        """The mean agreement over attributes."""
        return float(np.mean(list(self.agreed.values()))) if self.agreed else float("nan")

    def table(self) -> str:
        """Agreement per attribute, then each attribute's confusion (a row per class asked, a column per heard)."""
        lines = [f"{'attribute':>9} {'agreed':>7} {'asks':>5} {'chance':>7}"]
        for name, share in self.agreed.items():
            lines.append(f"{name:>9} {share:7.3f} {self.asked[name]:5d} {CHANCE[name]:7.3f}")
        for name, by_asked in self.confusion.items():
            heard = [*ATTRIBUTE_TYPES[name], UNHEARD]
            lines += ["", f"{name}: a row per class asked, a column per class heard"]
            lines.append(f"{'':>9} " + " ".join(f"{h:>8}" for h in heard))
            for value in ATTRIBUTE_TYPES[name]:
                if value in by_asked:
                    lines.append(f"{value:>9} " + " ".join(f"{by_asked[value].get(h, 0):8d}" for h in heard))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """Agreement, asks and confusion, for JSON."""
        return {"agreed": dict(self.agreed), "asked": dict(self.asked), "confusion": self.confusion}


def held_out_prompts(seed: int, count: int) -> list[Example]:
    """Test-split examples: captions no training run saw."""
    return list(examples(seed, count, split="test"))


def audio_adherence(asked: Sequence[Mapping[str, str]], clips: Sequence[np.ndarray], sample_rate: int) -> Adherence:
    """Agreement between the attributes asked of each clip and the probes' reading of it."""
    hits: dict[str, list[bool]] = defaultdict(list)
    confusion: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for wanted, audio in zip(asked, clips, strict=True):
        probed = {k: v for k, v in wanted.items() if k in PROBED}
        heard = measure(audio, sample_rate).words()
        for name, agreed in agreement(probed, heard).items():
            hits[name].append(agreed)
        for name, value in probed.items():
            confusion[name][value][heard.get(name, UNHEARD)] += 1
    return Adherence(
        agreed={name: float(np.mean(v)) for name, v in sorted(hits.items())},
        asked={name: len(v) for name, v in sorted(hits.items())},
        confusion={name: {a: dict(h) for a, h in by_asked.items()} for name, by_asked in sorted(confusion.items())},
    )


def generate(
    engine: GenerationEngine, prompts: Sequence[str], params: SamplingParams, seed: int, batch_size: int = 16
) -> list[np.ndarray]:
    """One clip per prompt, seeds ``seed, seed + 1, …``, in batches."""
    clips: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        audio, _ = engine.generate(chunk, params, seeds=[seed + start + i for i in range(len(chunk))])
        clips.extend(audio.numpy())
    return clips


def prompt_adherence(
    engine: GenerationEngine, prompts: Sequence[str], params: SamplingParams | None = None, seed: int = 0
) -> Adherence:
    """Generate for ``prompts`` and probe the result."""
    params = params or SamplingParams(duration_s=CLIP_S)
    asked = [read_prompt(p) for p in prompts]
    return audio_adherence(asked, generate(engine, prompts, params, seed), engine.sample_rate)


def sampling_sweep(
    engine: GenerationEngine,
    prompts: Sequence[str],
    temperatures: Sequence[float],
    guidance_scales: Sequence[float],
    seed: int = 0,
) -> dict[str, list[dict[str, float]]]:
    """Spectral entropy and flux against temperature (guidance 3), and adherence against guidance (temperature 1)."""
    by_temperature = []
    for temperature in temperatures:
        params = SamplingParams(duration_s=CLIP_S, temperature=temperature)
        clips = generate(engine, prompts, params, seed)
        by_temperature.append(
            {
                "temperature": temperature,
                "spectral_entropy": float(np.mean([spectral_entropy(c, engine.sample_rate) for c in clips])),
                "spectral_flux": float(np.mean([spectral_flux(c, engine.sample_rate) for c in clips])),
            }
        )
    by_guidance = []
    for scale in guidance_scales:
        params = SamplingParams(duration_s=CLIP_S, guidance_scale=scale)
        result = prompt_adherence(engine, prompts, params, seed)
        by_guidance.append({"guidance_scale": scale, "adherence": result.mean(), **result.agreed})
    return {"temperature": by_temperature, "guidance": by_guidance}
