"""How well the toy codec keeps what matters: mel distance, SNR, and the probes on its reconstructions."""

from collections.abc import Sequence

import numpy as np
import torch
from transformers import EncodecModel

from musicrl.toyworld.corpus import Example
from musicrl.toyworld.evaluate import PROBED, audio_adherence
from musicrl.toyworld.mel_loss import MultiScaleMelLoss, snr_db
from musicrl.toyworld.train_codec import decode, encode
from musicrl.toyworld.world import SAMPLE_RATE


def codec_metrics(codec: EncodecModel, held_out: Sequence[Example]) -> dict[str, float]:
    """Reconstruction quality and probe agreement (originals and reconstructions) on held-out clips.

    The probes judge every attribute of the clip, not only those its caption names: a codec has no prompt.
    """
    audio = np.stack([e.audio for e in held_out])
    reconstructed = decode(codec, encode(codec, audio))[:, : audio.shape[1]]
    truth = [e.attributes.as_dict() for e in held_out]
    original = audio_adherence(truth, list(audio), SAMPLE_RATE)
    rebuilt = audio_adherence(truth, list(reconstructed), SAMPLE_RATE)
    metrics = {
        "codec/mel_distance": float(MultiScaleMelLoss()(torch.from_numpy(reconstructed), torch.from_numpy(audio))),
        "codec/snr_db": float(np.mean([snr_db(r, a) for r, a in zip(reconstructed, audio, strict=True)])),
        "codec/clips": float(len(held_out)),
    }
    for name in PROBED:
        metrics[f"codec/probe_original/{name}"] = original.agreed.get(name, float("nan"))
        metrics[f"codec/probe_reconstructed/{name}"] = rebuilt.agreed.get(name, float("nan"))
    return metrics
