"""Generation throughput in audio-seconds per wall-second, measured against baselines in the same run.

1. The engine against transformers' own ``MusicgenForConditionalGeneration.generate()`` at equal batch.
2. The generator server with micro-batching and with continuous batching (max 16 clips in flight) against
   the same server with max batch 1, at 1, 4 and 16 concurrent clients (tritonclient over HTTP, each client
   sending requests back to back). The ratio that counts is against the unbatched server at its best
   concurrency, which serves one clip after another.

The model is a mid-size MusicGen defined here (tens of millions of parameters, seeded random weights),
large enough that a decode step costs what it costs on real checkpoints: reading the weights.

    python bench/generation_throughput.py [--duration 1.0] [--requests-per-client 2]
"""

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicrl.config import SamplingParams  # noqa: E402
from musicrl.models.engine import GenerationEngine  # noqa: E402
from tests.utils.processes import model_server  # noqa: E402


# ~42M parameters: 8 layers of width 512 over 4 codebooks of 2048 (MusicGen-small is 24 layers of 1024)
MID_SIZE = (
    "tiny://musicgen?seed=0&hidden_size=512&num_hidden_layers=8&num_attention_heads=8&ffn_dim=2048&codebook_size=2048"
)
PROMPTS = [f"{style} track number {i}" for i, style in enumerate(["lofi", "techno", "jazz", "folk"] * 8)]


def engine_vs_generate(duration_s: float, batch: int, repeats: int) -> tuple[float, float]:
    """Audio-seconds per second of the engine and of generate(), same model, batch, settings."""
    engine = GenerationEngine.from_uri(MID_SIZE)
    params = SamplingParams(duration_s=duration_s)  # temperature 1, top-k 250, guidance 3: MusicGen defaults
    prompts = PROMPTS[:batch]
    inputs = engine.bundle.tokenizer(prompts, padding=True, return_tensors="pt")
    new_tokens = engine.frames_for(duration_s) + engine.num_codebooks - 1

    def run_engine() -> None:
        engine.generate(prompts, params, seeds=list(range(batch)))

    def run_generate() -> None:
        with torch.inference_mode():
            engine.model.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=new_tokens)

    run_engine(), run_generate()  # warm-up
    engine_s, generate_s = _best_of_interleaved(run_engine, run_generate, repeats)
    return batch * duration_s / engine_s, batch * duration_s / generate_s


def _best_of_interleaved(first, second, repeats: int) -> tuple[float, float]:
    """Best wall time of each function, alternating them so that machine noise hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def server_throughput(
    max_batch: int, continuous: bool, clients: list[int], duration_s: float, per_client: int, log_dir: Path
) -> dict:
    env = {
        "MUSICRL_MODEL_URI": MID_SIZE,
        "MUSICRL_MAX_BATCH_SIZE": str(max_batch),
        "MUSICRL_CONTINUOUS_BATCHING": str(continuous).lower(),
        "MUSICRL_MAX_QUEUE_DELAY_MS": "20",
        "MUSICRL_ENABLE_GRPC": "false",
    }
    with model_server("services.generator", env, log_dir, "generator", timeout_s=180) as server:
        return client_throughput(server.http_url, clients, duration_s, per_client)


def client_throughput(url: str, clients: list[int], duration_s: float, per_client: int) -> dict[int, float]:
    """Audio-seconds per second the server at ``url`` delivers to each number of concurrent clients."""
    results = {}
    _client_loop(url, duration_s, 1, 0)  # warm-up
    for n in clients:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            seconds = sum(pool.map(lambda c: _client_loop(url, duration_s, per_client, c), range(n)))
        results[n] = seconds / (time.perf_counter() - start)
    return results


def _client_loop(url: str, duration_s: float, requests: int, client_id: int) -> float:
    client = httpclient.InferenceServerClient(url, network_timeout=600)
    audio_s = 0.0
    for i in range(requests):
        prompt = httpclient.InferInput("prompt", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([PROMPTS[(client_id + i) % len(PROMPTS)].encode()], dtype=np.object_))
        result = client.infer(
            "generator",
            [prompt],
            parameters={"duration_s": duration_s, "seed": client_id * 100 + i},
            outputs=[httpclient.InferRequestedOutput("num_samples")],
        )
        audio_s += float(result.as_numpy("num_samples")[0]) / 32_000
    client.close()
    return audio_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per clip")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="engine/generate() timings keep the best of N")
    args = parser.parse_args()
    torch.manual_seed(0)

    print(f"model: {MID_SIZE}")
    print(f"parameters: {sum(p.numel() for p in GenerationEngine.from_uri(MID_SIZE).model.parameters()) / 1e6:.1f}M")
    print(f"torch threads: {torch.get_num_threads()}, clip: {args.duration} s\n")

    print("engine vs transformers generate() (audio-s per wall-s, same batch)")
    for batch in (1, 4):
        ours, theirs = engine_vs_generate(args.duration, batch, args.repeats)
        print(f"  batch {batch:2d}: engine {ours:6.2f}  generate() {theirs:6.2f}  ratio {ours / theirs:5.2f}x")

    clients = [1, 4, 16]
    with tempfile.TemporaryDirectory() as logs:
        runs = {
            "micro-batching": server_throughput(
                16, False, clients, args.duration, args.requests_per_client, Path(logs)
            ),
            "continuous": server_throughput(16, True, clients, args.duration, args.requests_per_client, Path(logs)),
        }
        # max batch 1 means one clip after another: the micro-batcher then is a plain queue
        unbatched = server_throughput(1, False, clients, args.duration, args.requests_per_client, Path(logs))
    # the honest baseline is the unbatched server at its best: it cannot do better than one clip after another
    best_clients = max(unbatched, key=lambda n: unbatched[n])
    best = unbatched[best_clients]
    print("\nserver throughput (audio-s per wall-s), max 16 in flight vs max batch 1")
    for n in clients:
        line = f"  {n:2d} clients: unbatched {unbatched[n]:6.2f}"
        for name, run in runs.items():
            line += f" | {name} {run[n]:6.2f} ({run[n] / best:5.2f}x the unbatched best)"
        print(line)
    print(f"unbatched at its best: {best:.2f} audio-s/s with {best_clients} client(s)")


if __name__ == "__main__":
    main()
