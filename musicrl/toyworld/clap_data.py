"""The toy CLAP's data: clips with one defect or none, which captions fit which clips, and fast log-mels.

Splits go by a clip's *musical* caption (its clean caption, before the defect words), the caption the
policy trains on, so a prompt held out from one toy model is held out from all of them. The log-mels are
the stock ``ClapFeatureExtractor``'s to the bit, computed without its frame-by-frame loop.
"""

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm
from transformers import ClapFeatureExtractor
from transformers.audio_utils import power_to_db, window_function

from musicrl.models.audio import resample
from musicrl.toyworld.captions import ADJECTIVES, read_prompt
from musicrl.toyworld.corpus import Example, clean_example, degraded_example, split_of
from musicrl.toyworld.degrade import CLEAN_WORDS, DEFECT_WORDS, Degradation
from musicrl.toyworld.world import SAMPLE_RATE


KINDS = tuple(Degradation)  # a training clip carries at most one of these: mixes are the quality head's test
PEEK_S = 0.01  # a clip's caption depends only on its attributes, so 10 ms of it give its split at no cost
DEFECT_OF_WORD = {word: str(kind) for kind, words in DEFECT_WORDS.items() for word in words}  # "noisy" → hiss


def musical_split(seed: int, index: int) -> str:
    """The split of example ``index`` of corpus ``seed``, by its clean caption, without rendering the clip."""
    return split_of(clean_example(seed, index, PEEK_S).caption.text)


def single_defect_examples(seed: int, split: str, count: int, clean_p: float, start: int = 0) -> list[Example]:
    """``count`` examples of ``split`` from index ``start`` on: clean, or one defect (by index) at a random level."""
    chosen: list[Example] = []
    index = start
    with tqdm(total=count, desc=f"rendering {split} clips", unit="clip") as progress:
        while len(chosen) < count:
            if musical_split(seed, index) == split:
                chosen.append(degraded_example(seed, index, (KINDS[index % len(KINDS)],), clean_p))
                progress.update()
            index += 1
    return chosen


def caption_fits(examples: Sequence[Example]) -> torch.Tensor:
    """Which captions describe which clips, bool [N, N]: caption i fits clip j.

    A caption names only some attributes, so other clips often fit it too ("a fast melody"); counting them
    as negatives would teach the towers to contradict true captions. A caption fits a clip when every
    attribute it names has the clip's value, it names the same defects as the clip's own caption, and it
    says "clean" only of a clip with no damage at all.
    """
    fits = torch.ones(len(examples), len(examples), dtype=torch.bool)
    for name in (*ADJECTIVES, "texture"):
        has = np.array([e.attributes.as_dict()[name] for e in examples])  # [N]
        asked = np.array([read_prompt(e.caption.text).get(name, "") for e in examples])  # [N]; "" names nothing
        fits &= torch.from_numpy((asked[:, None] == "") | (asked[:, None] == has[None, :]))
    defects = [
        " ".join(sorted({DEFECT_OF_WORD[w] for w in _words(e.caption.text) & DEFECT_OF_WORD.keys()})) for e in examples
    ]
    fits &= torch.from_numpy(np.array(defects)[:, None] == np.array(defects)[None, :])
    says_clean = torch.tensor([bool(_words(e.caption.text) & set(CLEAN_WORDS)) for e in examples])  # [N]
    damaged = torch.tensor([bool(e.damage.levels) for e in examples])  # [N]
    fits &= ~(says_clean[:, None] & damaged[None, :])
    return fits


def _words(text: str) -> set[str]:
    return set(text.replace(",", " ").replace(":", " ").split())


def log_mel(feature_extractor: ClapFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """What ``feature_extractor`` (``rand_trunc``, ``repeatpad``) makes of a clip no longer than its window.

    The same arithmetic as transformers' frame-by-frame ``spectrogram`` (float64 FFT, complex64 spectrum,
    Slaney mels, dB), on all frames at once: equal to the bit and about 2.5× faster, which is most of the
    cost of preparing a corpus.

    Args:
        feature_extractor: The CLAP's extractor.
        audio: float [S] at its sampling rate, S <= ``nb_max_samples``.

    Returns:
        float32 [frames, mels].
    """
    fe = feature_extractor
    wave = np.asarray(audio, dtype=np.float64)
    length, hop, size = wave.shape[0], fe.hop_length, fe.fft_window_size
    if length < fe.nb_max_samples:
        wave = np.tile(wave, int(fe.nb_max_samples / length))  # repeatpad: whole repeats, then silence
        wave = np.pad(wave, (0, fe.nb_max_samples - wave.shape[0]))
    padded = np.pad(wave, (size // 2, size // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, size)[::hop]  # [T, N]
    rows = _distinct_frames(frames.shape[0], length, hop, size, fe.nb_max_samples)  # [T]: frame t equals rows[t]
    needed = np.unique(rows)
    window = window_function(size, "hann").astype(np.float64)
    spectrum = np.fft.rfft(frames[needed] * window, axis=1).astype(np.complex64)  # [U, F]
    power = np.abs(spectrum, dtype=np.float64) ** 2
    mel = np.maximum(1e-10, fe.mel_filters_slaney.T @ power.T)  # [M, U]
    db = np.asarray(power_to_db(mel, 1.0, 1e-10, None), dtype=np.float32).T  # [U, M]
    return db[np.searchsorted(needed, rows)]  # [T, M]


def _distinct_frames(count: int, length: int, hop: int, size: int, window: int) -> np.ndarray:
    """For each frame, the first frame with the same samples, int64 [count].

    A clip repeated to fill the window exactly, whose length is a whole number of hops, repeats its frames
    with a period of ``length / hop`` between the frames that touch the reflected edges; a 2 s clip has
    203 distinct frames of 1001.
    """
    rows = np.arange(count)
    if length >= window or length % hop or window % length:
        return rows
    period, first = length // hop, -(-size // 2 // hop)  # frames from ``first`` on start inside the wave
    last = (window - size // 2) // hop  # frames up to ``last`` end inside it
    inner = (rows >= first + period) & (rows <= last)
    rows[inner] = first + (rows[inner] - first) % period
    return rows


def clip_features(feature_extractor: ClapFeatureExtractor, clips: Sequence[np.ndarray]) -> torch.Tensor:
    """Log-mels of 32 kHz clips, resampled as the rewards resample them: float32 [N, 1, frames, mels]."""
    rate, limit = int(feature_extractor.sampling_rate), int(feature_extractor.nb_max_samples)
    rows = [log_mel(feature_extractor, resample(clip, SAMPLE_RATE, rate)[:limit]) for clip in tqdm(clips, "log-mels")]
    return torch.from_numpy(np.stack(rows))[:, None]
