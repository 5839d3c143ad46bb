"""CLAP's log-mel front end in torch, batched on the model's device.

``ClapFeatureExtractor`` computes one spectrogram at a time in NumPy, frame by frame: about 40 ms per 10 s
segment on a CPU core, longer than the tiny audio tower takes to embed it, and on a GPU node it would keep
the device waiting on the host. This is the same computation for a whole batch in one ``torch.stft``:
the extractor's repeat-padding, its Hann window and centring, the power spectrum, its mel filter bank (the
Slaney one for ``rand_trunc``, the HTK one for ``fusion``, taken from the extractor itself) and its decibel
scale. The spectrum is taken in float64 like the extractor's, so quiet bins near its -100 dB floor agree
too; ``tests/unit/models/test_clap_features.py`` states the tolerance.

Audio longer than the extractor's window is not handled here: the extractor crops it at random, and the
rewards cut clips into segments that fit (``musicrl.rewards.clap_embedding``).
"""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ClapFeatureExtractor

from musicrl.errors import InvalidRequest


CPU_ROWS = 1


class ClapLogMel:
    """Batched log-mel spectrograms equal to ``ClapFeatureExtractor``'s for audio that fits its window.

    Args:
        extractor: The model's feature extractor: its window, hop, filter banks and padding are used.
        device: Where spectrograms are computed and returned.
    """

    def __init__(self, extractor: ClapFeatureExtractor, device: torch.device | str = "cpu") -> None:
        if extractor.padding not in ("repeatpad", "repeat", "pad"):
            raise InvalidRequest(f"the CLAP feature extractor's padding {extractor.padding!r} is not supported")
        self.extractor = extractor
        self.device = torch.device(device)
        self.max_samples = int(extractor.nb_max_samples)
        self.window = torch.hann_window(extractor.fft_window_size, periodic=True, dtype=torch.float64, device=device)
        self.filters = {  # [bins, mels], float64 like the extractor's
            "rand_trunc": torch.from_numpy(np.asarray(extractor.mel_filters_slaney)).to(device),
            "fusion": torch.from_numpy(np.asarray(extractor.mel_filters)).to(device),
        }

    def __call__(self, waveforms: Sequence[np.ndarray | torch.Tensor], truncation: str) -> torch.Tensor:
        """The ``input_features`` the extractor would return for ``waveforms``.

        Args:
            waveforms: N mono waveforms at the extractor's sample rate, each at most ``max_samples`` long.
            truncation: ``rand_trunc`` (one channel) or ``fusion`` (the same spectrogram four times).

        Returns:
            float32 [N, C, frames, mels] on ``device``; C is 4 for ``fusion``, else 1.

        Raises:
            InvalidRequest: An empty batch, an empty or too long waveform, or an unknown ``truncation``.
        """
        if truncation not in self.filters:
            raise InvalidRequest(f"truncation must be rand_trunc or fusion, got {truncation!r}")
        if not waveforms:
            raise InvalidRequest("no waveforms to compute spectrograms of")
        # a few rows at a time on a CPU: the float64 spectrum of a 10 s row is 8 MB, and a whole batch's
        # temporaries fall out of cache (measured: 16 rows at once took 2.3x as long as one by one)
        rows = len(waveforms) if self.device.type == "cuda" else CPU_ROWS
        decibels = torch.cat(
            [self._log_mel(waveforms[i : i + rows], truncation) for i in range(0, len(waveforms), rows)]
        )  # [N, frames, mels]
        channels = 4 if truncation == "fusion" else 1
        return decibels.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()  # [N, C, frames, mels]

    def _log_mel(self, waveforms: Sequence[np.ndarray | torch.Tensor], truncation: str) -> torch.Tensor:
        """n waveforms → float32 [n, frames, mels]."""
        padded = torch.stack([self._padded(w) for w in waveforms])  # [n, S]
        spectrum = torch.stft(
            padded,
            n_fft=self.extractor.fft_window_size,
            hop_length=self.extractor.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [n, bins, frames]
        power = spectrum.real.square().add_(spectrum.imag.square())  # [n, bins, frames]; abs() is slower
        mel = torch.clamp(self.filters[truncation].T @ power, min=1e-10)  # [n, mels, frames]; the extractor's floors
        return (10.0 * torch.log10(mel)).transpose(1, 2).float()  # [n, frames, mels]

    def _padded(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The waveform repeated and zero-padded to ``max_samples``, as the extractor pads it (float64 [S])."""
        wave = torch.as_tensor(waveform).to(device=self.device, dtype=torch.float64)
        if wave.dim() != 1 or not 0 < wave.shape[0] <= self.max_samples:
            raise InvalidRequest(
                f"each waveform must be mono with 1 to {self.max_samples} samples, got shape {tuple(wave.shape)}"
            )
        if wave.shape[0] < self.max_samples:
            repeats = self.max_samples // wave.shape[0]
            if self.extractor.padding == "repeat":
                wave = wave.repeat(repeats + 1)[: self.max_samples]
            elif self.extractor.padding == "repeatpad":
                wave = wave.repeat(repeats)
            wave = F.pad(wave, (0, self.max_samples - wave.shape[0]))
        return wave
