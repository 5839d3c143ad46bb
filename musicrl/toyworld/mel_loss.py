"""A multi-scale log-mel distance, the reconstruction loss of the toy codec and its reported quality.

EnCodec trains on mel distances at several resolutions, so that neither the timing of onsets (short
windows) nor the pitch of partials (long windows) can be traded away for the other. Without its
adversarial losses the codec's phase is free, which the probes (pitch, tempo, centroid, level) do not hear.
"""

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from musicrl.toyworld.world import SAMPLE_RATE


WINDOWS = (128, 256, 512, 1024)  # 8 to 64 ms at 16 kHz
MEL_BINS = 64  # at most: a short window has too few frequency bins for 64 filters, and gets window // 8
LOG_FLOOR = 1e-3  # 60 dB under each clip's loudest bin: empty bins do not dominate the log distance


class MultiScaleMelLoss(torch.nn.Module):
    """Mean over scales of the L1 distance between log-mel spectrograms, plus L1 between mel magnitudes."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.windows = WINDOWS
        for window in WINDOWS:
            bank = mel_filter_bank(
                num_frequency_bins=window // 2 + 1,
                num_mel_filters=min(MEL_BINS, window // 8),
                min_frequency=20.0,
                max_frequency=sample_rate / 2,
                sampling_rate=sample_rate,
                norm=None,  # triangles of height 1: a bin's magnitude is not shrunk by its width
                mel_scale="htk",
            )
            self.register_buffer(f"bank_{window}", torch.from_numpy(np.asarray(bank, dtype=np.float32)))
            self.register_buffer(f"hann_{window}", torch.hann_window(window))

    def mel(self, audio: torch.Tensor, window: int) -> torch.Tensor:
        """Mel magnitudes [B, frames, bins] of audio [B, samples]."""
        spectrum = torch.stft(
            audio, n_fft=window, hop_length=window // 4, window=getattr(self, f"hann_{window}"), return_complex=True
        ).abs()  # [B, F, frames]
        return spectrum.transpose(1, 2) @ getattr(self, f"bank_{window}")

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``estimate`` against ``target``, both float [B, samples]."""
        total = estimate.new_zeros(())
        for window in self.windows:
            mel_estimate, mel_target = self.mel(estimate, window), self.mel(target, window)
            floor = LOG_FLOOR * mel_target.amax(dim=(1, 2), keepdim=True)  # relative: soft clips count as much
            log_distance = (torch.log(mel_estimate + floor) - torch.log(mel_target + floor)).abs().mean()
            total = total + log_distance + (mel_estimate - mel_target).abs().mean() / (mel_target.abs().mean() + 1e-8)
        return total / len(self.windows)


def snr_db(estimate: np.ndarray, target: np.ndarray) -> float:
    """Signal-to-noise ratio of a reconstruction, in dB (waveform; phase errors count as noise)."""
    noise = float(np.sum((estimate - target) ** 2)) + 1e-12
    return 10 * float(np.log10(float(np.sum(target**2)) / noise + 1e-12))
