"""How the live generator schedules work: requests join the running batch, a full queue says when to retry,
and SIGTERM lets accepted requests finish while it refuses new ones."""

import concurrent.futures
import signal
import threading
import time

import numpy as np
import pytest
import requests

from musicrl.config import SamplingParams
from musicrl.models.engine import GenerationEngine, GenerationRequest
from tests.utils.processes import model_server


pytestmark = pytest.mark.slow

TINY = "tiny://musicgen?seed=0"
SERVER_ENV = {"MUSICRL_MODEL_URI": TINY, "MUSICRL_MAX_DURATION_S": "30", "MUSICRL_TORCH_THREADS": "1"}
LONG_S = 20.0  # ~2-4 s of decoding for the tiny model on one thread: long enough to arrive during
SHORT_S = 0.3


def infer(server, prompt: str, duration_s: float, seed: int, timeout_s: float = 120) -> requests.Response:
    body = {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
        "parameters": {"duration_s": duration_s, "seed": seed},
        "outputs": [{"name": "codes"}],
    }
    return requests.post(f"http://{server.http_url}/v2/models/generator/infer", json=body, timeout=timeout_s)


def codes_of(reply: requests.Response) -> np.ndarray:
    (codes,) = [o for o in reply.json()["outputs"] if o["name"] == "codes"]
    return np.array(codes["data"], dtype=np.int64).reshape(codes["shape"])[0]


def alone(prompt: str, duration_s: float, seed: int) -> np.ndarray:
    engine = GenerationEngine.from_uri(TINY)
    (codes,) = engine.sample_codes([GenerationRequest(prompt, SamplingParams(duration_s=duration_s), seed)])
    return codes.numpy()


def test_a_request_arriving_mid_batch_joins_it_and_finishes_first_with_its_own_codes(tmp_path):
    finished: dict[str, float] = {}

    def timed(name: str, duration_s: float, seed: int) -> requests.Response:
        reply = infer(server, name, duration_s, seed)
        finished[name] = time.monotonic()
        return reply

    with (
        model_server("services.generator", SERVER_ENV, tmp_path, "generator") as server,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        long = pool.submit(timed, "long", LONG_S, 1)
        time.sleep(0.5)  # the long clip is decoding
        assert not long.done()
        shorts = [pool.submit(timed, f"short {i}", SHORT_S, 10 + i) for i in range(2)]
        replies = {"long": long.result(), **{f"short {i}": f.result() for i, f in enumerate(shorts)}}
    assert all(r.status_code == 200 for r in replies.values()), {k: r.text for k, r in replies.items()}
    # a micro-batcher would have held the short requests until the long clip's batch ended
    assert finished["short 0"] < finished["long"] and finished["short 1"] < finished["long"]
    assert np.array_equal(codes_of(replies["long"]), alone("long", LONG_S, 1))
    for i in range(2):
        assert np.array_equal(codes_of(replies[f"short {i}"]), alone(f"short {i}", SHORT_S, 10 + i))


def test_a_full_queue_answers_503_with_retry_after_and_the_server_keeps_serving(tmp_path):
    env = {**SERVER_ENV, "MUSICRL_MAX_BATCH_SIZE": "1", "MUSICRL_MAX_QUEUED_ROWS": "1"}
    with (
        model_server("services.generator", env, tmp_path, "generator") as server,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        in_flight = pool.submit(infer, server, "first", LONG_S, 1)
        time.sleep(0.5)
        queued = pool.submit(infer, server, "second", SHORT_S, 2)
        time.sleep(0.3)
        refused = infer(server, "third", SHORT_S, 3)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "already waiting" in refused.json()["error"]
        assert in_flight.result().status_code == 200 and queued.result().status_code == 200
        again = infer(server, "third", SHORT_S, 3)  # the refusal lost nothing: the retry is served
        assert again.status_code == 200
        assert np.array_equal(codes_of(again), alone("third", SHORT_S, 3))
        metrics = requests.get(f"http://{server.http_url}/metrics", timeout=10).text
    assert 'musicrl_batch_overloaded_total{model="generator"} 1.0' in metrics


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(tmp_path):
    env = {**SERVER_ENV, "MUSICRL_SHUTDOWN_GRACE_S": "60"}
    with (
        model_server("services.generator", env, tmp_path, "generator") as server,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        in_flight = pool.submit(infer, server, "last one", LONG_S, 4)
        time.sleep(0.5)
        assert not in_flight.done()
        server.process.send_signal(signal.SIGTERM)
        _wait_for_log(server, "shutting down")  # the signal is handled on the server's event loop, soon after
        refusals = _refusals_while(in_flight, server)
        reply = in_flight.result()
        exit_code = server.process.wait(timeout=60)
    assert reply.status_code == 200, reply.text
    assert np.array_equal(codes_of(reply), alone("last one", LONG_S, 4))  # complete, not cut short
    assert refusals, "no request was tried while the server drained"
    assert all(r in ("refused", 503) for r in refusals), refusals
    assert exit_code == 0
    assert "accepted requests get up to 60 s to finish" in server.log()


def _wait_for_log(server, text: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


def _refusals_while(in_flight: concurrent.futures.Future, server) -> list[object]:
    """Try new requests while ``in_flight`` runs: each one's status, or ``refused`` for a closed socket."""
    outcomes: list[object] = []
    stop = threading.Event()
    in_flight.add_done_callback(lambda _: stop.set())
    while not stop.is_set():
        try:
            outcomes.append(infer(server, "too late", SHORT_S, 5, timeout_s=30).status_code)
        except requests.ConnectionError:
            outcomes.append("refused")
        stop.wait(0.2)
    return outcomes
