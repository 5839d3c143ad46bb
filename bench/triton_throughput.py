"""The generator on Triton against the same generator on our KServe server, in audio-seconds per wall-second.

Both serve the mid-size policy of ``bench/generation_throughput.py`` with the same engine, and the same
clients (tritonclient over HTTP, each sending one-prompt requests back to back) load each at 1, 4 and 16
concurrent clients, in one run. Our server runs its default scheduler, continuous batching (max 16 in flight);
the Triton model decodes each request's prompts together but takes requests one at a time
(``max_batch_size`` 0, see ``musicrl.triton.repository``), so the ratio says what that costs under load.

    python bench/triton_throughput.py [--duration 1.0] [--requests-per-client 2]
"""

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_throughput import MID_SIZE, client_throughput  # noqa: E402

from tests.utils.processes import ServiceProcess, export_triton_repository, model_server, triton_server  # noqa: E402


CLIENTS = (1, 4, 16)


@contextlib.contextmanager
def runtime(name: str, logs: Path) -> Iterator[ServiceProcess]:
    logs.mkdir(parents=True, exist_ok=True)
    settings = {"MUSICRL_MODEL_URI": MID_SIZE, "MUSICRL_MAX_BATCH_SIZE": "16", "MUSICRL_MAX_QUEUE_DELAY_MS": "20"}
    if name == "kserve":
        settings["MUSICRL_CONTINUOUS_BATCHING"] = "true"  # named: the output says which scheduler it measured
        with model_server("services.generator", settings, logs, "generator", timeout_s=180) as server:
            yield server
        return
    generator_only = ["--text-adherence-uri", "", "--quality-uri", ""]
    repository = export_triton_repository(logs / "repository", settings, generator_only)
    with triton_server(repository, logs) as server:
        yield server


def throughput(name: str, duration_s: float, per_client: int, logs: Path) -> dict[int, float]:
    with runtime(name, logs) as server:
        return client_throughput(server.http_url, list(CLIENTS), duration_s, per_client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per clip")
    parser.add_argument("--requests-per-client", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kserve = throughput("kserve", args.duration, args.requests_per_client, Path(tmp) / "kserve")
        triton = throughput("triton", args.duration, args.requests_per_client, Path(tmp) / "triton")
    print(f"model: {MID_SIZE}, clip: {args.duration} s\n")
    print("generator throughput (audio-s per wall-s): Triton against our KServe server (continuous batching, max 16)")
    for n in CLIENTS:
        print(
            f"  {n:2d} clients: triton {triton[n]:6.2f}  kserve {kserve[n]:6.2f}  ratio {triton[n] / kserve[n]:5.2f}x"
        )


if __name__ == "__main__":
    main()
