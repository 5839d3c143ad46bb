"""Hostile and unlucky input against the real gateway: no 5xx, one error shape, bounded work, honest readiness.

Each test names the defect it guards against; all of them failed on the gateway before it was hardened.
"""

import json
import math
import socket
import threading
import time

import pytest
import requests

from musicrl.gateway.auth import Scope, new_api_key
from tests.utils.platform import running_platform
from tests.utils.stream import stream_events


pytestmark = pytest.mark.slow

PAGE = {"X-Requested-With": "musicrl-page"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    env = {"MUSICRL_MAX_INFLIGHT_GENERATIONS": "1", "MUSICRL_SESSION_MINTS_PER_MINUTE": "60"}
    with running_platform(tmp_path_factory.mktemp("platform"), env) as running:
        yield running


def _post_raw(platform, path: str, raw: str, **headers) -> requests.Response:
    """POST a body exactly as written: JSON that Python's encoder would refuse (NaN, lone surrogates)."""
    headers = {"Content-Type": "application/json", **platform.headers(**headers)}
    return requests.post(platform.url + path, data=raw.encode("ascii"), headers=headers, timeout=60)


def _comparison(platform, listener_id: str = "listener-1") -> dict:
    reply = requests.post(
        f"{platform.url}/v1/comparisons",
        json={"prompt": "a calm piano piece", "listener_id": listener_id},
        headers=platform.headers(),
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


def _preferences(platform, comparison_id: str) -> list:
    """The PreferenceSubmitted events of one comparison, read straight from the stream."""
    events = stream_events(platform.nats.url, "musicrl.v1.preference_submitted")
    return [e for e in events if e.comparison_id == comparison_id]


def _assert_one_error_shape(reply: requests.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


@pytest.mark.parametrize(
    "path, template",
    [
        ("/v1/comparisons", '{"prompt": "\\ud800 x"}'),
        ("/v1/comparisons", '{"prompt": "x", "listener_id": "\\udfff"}'),
        ("/v1/generations", '{"prompt": "\\ud800"}'),
        ("/v1/ratings", '{"clip_id": "' + "0" * 32 + '", "score": "\\ud800"}'),
        ("/v1/comparisons/00000000-0000-4000-8000-000000000000/preference", '{"choice": "\\ud800"}'),
        ("/v1/comparisons/00000000-0000-4000-8000-000000000000/playback", '{"clip_id": "\\ud800", "listened_ms": 1}'),
        ("/v1/generations", '{"prompt": "x", "\\ud800": 1}'),  # a surrogate in a field *name*, echoed in loc
    ],
)
def test_a_lone_surrogate_is_a_422_not_a_500(platform, path, template):
    body = _assert_one_error_shape(_post_raw(platform, path, template), 422)
    assert body["errors"] and all(isinstance(e["msg"], str) for e in body["errors"])
    assert "\ud800" not in json.dumps(body)  # never echoed back


def test_a_surrogate_in_the_routing_table_is_a_422(platform):
    table = requests.get(f"{platform.url}/v1/admin/routing", headers=platform.headers()).json()
    raw = json.dumps(table).replace('"v1"', '"\\ud800"')
    reply = requests.put(
        f"{platform.url}/v1/admin/routing",
        data=raw.encode(),
        headers={"Content-Type": "application/json", **platform.headers()},
    )
    _assert_one_error_shape(reply, 422)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "path, template",
    [
        ("/v1/generations", '{"prompt": "x", "duration_s": %s}'),
        ("/v1/generations", '{"prompt": "x", "temperature": %s}'),
        ("/v1/comparisons/00000000-0000-4000-8000-000000000000/playback", '{"clip_id": "%s", "listened_ms": %%s}'),
        ("/v1/ratings", '{"clip_id": "' + "0" * 32 + '", "score": %s}'),
    ],
)
def test_nan_and_infinity_are_a_422_not_a_500(platform, path, template, number):
    raw = template.replace('"%s"', '"' + "0" * 32 + '"').replace("%%s", "%s") % number
    _assert_one_error_shape(_post_raw(platform, path, raw), 422)


def test_nan_in_the_routing_table_is_a_422(platform):
    table = requests.get(f"{platform.url}/v1/admin/routing", headers=platform.headers()).json()
    raw = json.dumps({**table, "canary_share": math.nan})  # Python writes the NaN token
    reply = requests.put(
        f"{platform.url}/v1/admin/routing",
        data=raw.encode(),
        headers={"Content-Type": "application/json", **platform.headers()},
    )
    _assert_one_error_shape(reply, 422)


@pytest.mark.parametrize("score", [True, "3", 3.0, 3.5])
def test_a_number_field_takes_only_a_json_number(platform, score):
    reply = requests.post(
        f"{platform.url}/v1/ratings", json={"clip_id": "0" * 32, "score": score}, headers=platform.headers()
    )
    body = _assert_one_error_shape(reply, 422)
    assert body["errors"][0]["loc"] == ["body", "score"]


def test_a_body_over_the_cap_is_a_413_without_an_echo(platform):
    huge = {"prompt": "x" * 10_000_000}
    reply = requests.post(f"{platform.url}/v1/comparisons", json=huge, headers=platform.headers())
    body = _assert_one_error_shape(reply, 413)
    assert "65536 bytes" in body["detail"]
    assert len(reply.content) < 1000

    def chunks():  # no Content-Length: the cap must hold for a streamed body too
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    streamed = requests.post(
        f"{platform.url}/v1/comparisons",
        data=chunks(),
        headers={"Content-Type": "application/json", **platform.headers()},
    )
    _assert_one_error_shape(streamed, 413)


def test_validation_errors_name_the_fields_and_never_echo_the_input(platform):
    secret = "a-very-recognisable-prompt " * 100  # 2,700 characters: over the 1,000 limit
    reply = requests.post(
        f"{platform.url}/v1/generations", json={"prompt": secret, "num_clips": 0}, headers=platform.headers()
    )
    body = _assert_one_error_shape(reply, 422)
    assert "recognisable" not in reply.text
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "num_clips")}
    too_long = requests.post(f"{platform.url}/v1/generations", json={"prompt": secret}, headers=platform.headers())
    body = _assert_one_error_shape(too_long, 422)
    assert body["errors"] == [
        {
            "loc": ["body", "prompt"],
            "msg": "String should have at most 1000 characters (it has 2700)",
            "type": "string_too_long",
        }
    ]
    assert body["detail"].startswith("invalid request: body.prompt:")


def test_the_document_states_the_limits_the_server_enforces(platform):
    document = requests.get(f"{platform.url}/openapi.json").json()
    generation = document["components"]["schemas"]["GenerationCreate"]["properties"]
    assert generation["prompt"]["maxLength"] == 1000
    assert generation["duration_s"]["maximum"] == 2.0  # the test platform's MUSICRL_MAX_DURATION_S
    assert generation["num_clips"]["maximum"] == 4
    assert document["components"]["schemas"]["ComparisonCreate"]["properties"]["prompt"]["maxLength"] == 1000
    at_limit = requests.post(
        f"{platform.url}/v1/generations", json={"prompt": "x" * 1000, "duration_s": 2.0}, headers=platform.headers()
    )
    assert at_limit.status_code == 202, at_limit.text
    job_url = f"{platform.url}/v1/generations/{at_limit.json()['id']}"
    assert requests.get(job_url, params={"wait": "true"}, headers=platform.headers()).json()["status"] == "done"
    over = requests.post(
        f"{platform.url}/v1/generations", json={"prompt": "x", "duration_s": 2.01}, headers=platform.headers()
    )
    _assert_one_error_shape(over, 422)


def test_idempotency_keys_are_scoped_by_listener(platform):
    comparisons = {who: _comparison(platform, who) for who in ("alice", "bob")}
    headers = platform.headers(**{"Idempotency-Key": "vote-1"})
    event_ids = []
    for who, comparison in comparisons.items():
        reply = requests.post(
            f"{platform.url}/v1/comparisons/{comparison['id']}/preference",
            json={"choice": "a", "listener_id": who},
            headers=headers,
        )
        assert reply.status_code == 201, reply.text  # not a 422 "key reused": another listener's key
        assert "Idempotent-Replayed" not in reply.headers
        event_ids.append(reply.json()["event_id"])
    assert event_ids[0] != event_ids[1]


def test_feedback_on_another_listeners_comparison_is_flagged_or_refused(platform):
    comparison = _comparison(platform, "alice")
    url = f"{platform.url}/v1/comparisons/{comparison['id']}/preference"
    # an API-key client may let several of its listeners judge one comparison: accepted, and flagged
    shared = requests.post(url, json={"choice": "a", "listener_id": "carol"}, headers=platform.headers())
    own = requests.post(url, json={"choice": "b", "listener_id": "alice"}, headers=platform.headers())
    assert shared.status_code == own.status_code == 201
    flags = {e.header.event_id: e.other_listener for e in _preferences(platform, comparison["id"])}
    assert flags == {shared.json()["event_id"]: True, own.json()["event_id"]: False}
    # a page session cannot be forged: another session's comparison id can only have leaked
    page = requests.Session()
    page.get(platform.url + "/")
    for path, body in (
        ("/preference", {"choice": "a"}),
        ("/playback", {"clip_id": comparison["clips"][0]["id"], "listened_ms": 300}),
    ):
        reply = page.post(f"{platform.url}/v1/comparisons/{comparison['id']}{path}", json=body, headers=PAGE)
        assert reply.status_code == 403 and "served to another listener" in reply.json()["detail"]


def test_each_clip_says_how_much_must_be_played(platform):
    comparison = _comparison(platform)
    for clip in comparison["clips"]:
        assert clip["duration_s"] == pytest.approx(0.4)
        assert clip["min_listened_ms"] == 200  # half of the 0.4 s comparison clip


def test_page_sessions_are_minted_at_a_bounded_rate_and_cannot_order_generations(platform):
    session = requests.Session()
    assert session.get(platform.url + "/").status_code == 200
    generation = session.post(f"{platform.url}/v1/generations", json={"prompt": "x"}, headers=PAGE)
    assert generation.status_code == 403 and "'generate' scope" in generation.json()["detail"]
    comparison = session.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=PAGE)
    assert comparison.status_code == 201
    statuses = [requests.get(platform.url + "/").status_code for _ in range(15)]  # 60 a minute: 10 at once
    assert statuses[0] == 200 and 429 in statuses
    assert session.get(platform.url + "/").status_code == 200  # a listener with a cookie is not minting


def test_without_a_generator_the_gateway_stays_ready_and_feedback_flows(platform):
    comparison = _comparison(platform)
    url, headers = f"{platform.url}/v1/admin/routing", platform.headers()
    table = requests.get(url, headers=headers).json()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening: connections are refused
        assert requests.put(url, json={**table, "stable": {**table["stable"], "url": dead}}, headers=headers).ok
        try:
            ready = requests.get(f"{platform.url}/readyz")
            assert ready.status_code == 200 and ready.json()["checks"] == {"nats": True}
            down = requests.post(f"{platform.url}/v1/comparisons", json={"prompt": "x"}, headers=headers)
            body = _assert_one_error_shape(down, 503)
            assert "unreachable" in body["detail"] and down.headers["Retry-After"]
            clip = comparison["clips"][0]
            played = requests.post(
                f"{platform.url}/v1/comparisons/{comparison['id']}/playback",
                json={"clip_id": clip["id"], "listened_ms": 300, "listener_id": "listener-1"},
                headers=headers,
            )
            assert played.status_code == 201
            assert requests.get(platform.url + clip["audio_url"], headers=headers).status_code == 200
            metrics = requests.get(f"{platform.url}/metrics").text
            assert f'musicrl_gateway_upstream_ready{{url="{dead}",version="v1"}} 0.0' in metrics
        finally:
            requests.put(url, json=table, headers=headers)


class StallingServer:
    """A TCP server on loopback that accepts connections and never answers: a generator that hangs."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.socket.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.accepted:
            connection.close()  # the waiting requests fail at once


def test_generations_are_bounded_and_a_failed_job_says_why(platform):
    url, headers = f"{platform.url}/v1/admin/routing", platform.headers()
    table = requests.get(url, headers=headers).json()
    stalling = StallingServer()
    assert requests.put(url, json={**table, "stable": {**table["stable"], "url": stalling.url}}, headers=headers).ok
    try:
        first = requests.post(f"{platform.url}/v1/generations", json={"prompt": "x"}, headers=headers)
        assert first.status_code == 202  # it holds the only slot while the generator hangs
        deadline = time.monotonic() + 10
        while not stalling.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stalling.accepted, "the job never reached the generator"
        second = requests.post(f"{platform.url}/v1/generations", json={"prompt": "y"}, headers=headers)
        body = _assert_one_error_shape(second, 503)
        assert "maximum of 1 generations" in body["detail"] and int(second.headers["Retry-After"]) >= 1
        stalling.close()
        job_url = f"{platform.url}/v1/generations/{first.json()['id']}"
        job = requests.get(job_url, params={"wait": "true"}, headers=headers).json()
        assert job["status"] == "failed" and "generator" in job["error"]
    finally:
        stalling.close()
        requests.put(url, json=table, headers=headers)
    third = requests.post(f"{platform.url}/v1/generations", json={"prompt": "z", "duration_s": 0.2}, headers=headers)
    assert third.status_code == 202  # the failed job gave its slot back
    done = requests.get(
        f"{platform.url}/v1/generations/{third.json()['id']}", params={"wait": "true"}, headers=headers
    )
    assert done.json()["status"] == "done"


def test_a_key_added_to_the_keys_file_works_without_a_restart(platform):
    keys_file = platform.root / "keys.json"
    token, key = new_api_key("added-later", [Scope.RATE])
    entries = json.loads(keys_file.read_text())
    keys_file.write_text(json.dumps([*entries, key.to_wire()]))
    rating = {"clip_id": "0" * 32, "score": 3}
    deadline, status = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        status = requests.post(
            f"{platform.url}/v1/ratings", json=rating, headers={"Authorization": f"Bearer {token}"}
        ).status_code
        if status != 401:
            break
        time.sleep(0.2)
    assert status == 404  # authenticated (the clip does not exist), not 401
    keys_file.write_text("[{broken")  # a half-written file keeps the last good keys
    time.sleep(1.2)
    still = requests.post(f"{platform.url}/v1/ratings", json=rating, headers={"Authorization": f"Bearer {token}"})
    assert still.status_code == 404
    keys_file.write_text(json.dumps(entries))


def test_the_request_id_is_echoed_and_reaches_the_generator(platform):
    reply = requests.post(
        f"{platform.url}/v1/comparisons",
        json={"prompt": "lofi", "listener_id": "listener-1"},
        headers=platform.headers(**{"X-Request-ID": "trace-me-42"}),
    )
    assert reply.status_code == 201 and reply.headers["X-Request-ID"] == "trace-me-42"
    minted = requests.get(f"{platform.url}/healthz")
    assert len(minted.headers["X-Request-ID"]) == 32  # none sent: one is minted
    unsafe = requests.get(f"{platform.url}/healthz", headers={"X-Request-ID": "a b\tc"})
    assert unsafe.headers["X-Request-ID"] != "a b\tc"  # never logged verbatim
    deadline = time.monotonic() + 5
    while "trace-me-42" not in platform.generator.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "trace-me-42" in platform.generator.log()
