"""Generation speed on a GPU: a MusicGen-small-sized decoder in bf16 at batch 1, 16 and 64, against the memory bound.

The model is built from a config with seeded random weights (no download): MusicGen-small's decoder (24 layers
of width 1024, 16 heads, FFN 4096, 4 codebooks of 2048) behind a small text encoder and a small EnCodec, so what
is timed is the decode loop (:meth:`GenerationEngine.sample_codes`: text encoding, every step, sampling), not
EnCodec's decoder.

For each batch it prints audio-seconds generated per wall-second and the time per decode step. At batch 1 a
step must read every decoder weight once, so ``parameter bytes / memory bandwidth`` bounds its time from below;
the bandwidth is measured here with a device-to-device copy, and the fraction of that bound the step reaches
is printed (1.0 is the hardware's speed; launch overheads and host syncs push it down, which is what CUDA
graphs would recover).

    python bench/gpu_generation.py                # on cuda, ~2 minutes
    python bench/gpu_generation.py --dry-run      # a small model on the CPU, to test this script
"""

import argparse
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrl.config import EngineConfig, SamplingParams  # noqa: E402
from musicrl.models.engine import GenerationEngine, GenerationRequest  # noqa: E402


MUSICGEN_SMALL = (
    "tiny://musicgen?seed=0&hidden_size=1024&num_hidden_layers=24&num_attention_heads=16&ffn_dim=4096"
    "&codebook_size=2048&text_hidden_size=768"
)
DRY_RUN_MODEL = "tiny://musicgen?seed=0&hidden_size=128&num_hidden_layers=2&num_attention_heads=4&ffn_dim=256"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, megabytes: int) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once), best of 5."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best


def bytes_read_per_step(engine: GenerationEngine) -> int:
    """Bytes of the decoder weights a step reads: every layer, norm and head; of the embeddings, a few rows."""
    decoder = engine.model.decoder
    embeddings = {id(p) for p in decoder.model.decoder.embed_tokens.parameters()}
    return sum(p.numel() * p.element_size() for p in decoder.parameters() if id(p) not in embeddings)


def timed_generation(engine: GenerationEngine, batch: int, duration_s: float) -> tuple[float, int]:
    """Wall seconds of one sample_codes call of ``batch`` clips (after a warm-up), and its decode steps."""
    params = SamplingParams(duration_s=duration_s)  # MusicGen's defaults: temperature 1, top-k 250, guidance 3
    requests = [GenerationRequest(f"an upbeat track number {i}", params, seed=i) for i in range(batch)]
    engine.sample_codes(requests[:1])  # kernels chosen, allocator grown
    synchronize(engine.device)
    start = time.perf_counter()
    engine.sample_codes(requests)
    synchronize(engine.device)
    return time.perf_counter() - start, engine.frames_for(duration_s) + engine.num_codebooks - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a small model on the CPU (tests this script)")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of audio per clip")
    args = parser.parse_args()
    if args.dry_run:
        uri, config, batches, duration = DRY_RUN_MODEL, EngineConfig(), [1, 2], 0.2
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to test this script on the CPU")
        uri, config = MUSICGEN_SMALL, EngineConfig(device="cuda", dtype="bfloat16")
        batches, duration = [int(b) for b in args.batches.split(",")], args.duration
    engine = GenerationEngine.from_uri(uri, config)
    device = engine.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    weight_bytes = bytes_read_per_step(engine)
    bandwidth = copy_bandwidth(device, 64 if args.dry_run else 4096)
    print(f"device: {name}, {config.dtype}; model: {uri}")
    print(f"decoder weights read per step: {weight_bytes / 1e6:.1f} MB; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"clips of {duration:g} s\n")
    print("batch | audio-s/s | ms/step | fraction of the weight-bandwidth bound")
    for batch in batches:
        seconds, steps = timed_generation(engine, batch, duration)
        step_ms = 1000 * seconds / steps
        line = f"{batch:5d} | {batch * duration / seconds:9.2f} | {step_ms:7.2f} |"
        if batch == 1:
            bound_ms = 1000 * weight_bytes / bandwidth
            line += f" {bound_ms / step_ms:.3f} (bound {bound_ms:.3f} ms/step)"
        print(line, flush=True)
    print("PASS generation: measured every batch")


if __name__ == "__main__":
    main()
