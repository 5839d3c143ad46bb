"""Property-based requests generated from the gateway's own OpenAPI document (schemathesis).

Every operation is called with generated valid and invalid inputs: no reply may be a 5xx, and every reply
must match the status codes and bodies the document declares. A second test puts any string (lone
surrogates included) and any JSON number (NaN and Infinity included) into every field of every body.
"""

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from tests.utils.platform import running_platform


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with running_platform(tmp_path_factory.mktemp("platform")) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_schema(platform):
    return schemathesis.openapi.from_url(f"{platform.url}/openapi.json")


def test_the_document_covers_every_route(platform):
    document = requests.get(f"{platform.url}/openapi.json").json()
    assert set(document["paths"]) == {
        "/v1/generations",
        "/v1/generations/{generation_id}",
        "/v1/clips/{clip_id}.wav",
        "/v1/clips/{clip_id}/codes",
        "/v1/comparisons",
        "/v1/comparisons/{comparison_id}/playback",
        "/v1/comparisons/{comparison_id}/preference",
        "/v1/ratings",
        "/v1/admin/routing",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    assert {"HTTPBearer", "APIKeyCookie"} <= set(document["components"]["securitySchemes"])
    open_operations = {path for path, ops in document["paths"].items() for op in ops.values() if "security" not in op}
    assert open_operations == {"/healthz", "/readyz", "/metrics"}  # every other operation states its credentials
    create = document["paths"]["/v1/comparisons"]["post"]
    assert {"201", "400", "401", "403", "409", "422", "429", "503"} <= set(create["responses"])


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_no_server_errors_and_replies_match_the_document(platform, gateway_schema):
    # schemathesis' pytest plugin does not run under pytest 9, so each operation's strategy is driven with
    # hypothesis directly (schemathesis' documented `as_strategy` route)
    operations = _operations(gateway_schema)
    assert len(operations) == 13
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:
            case.call_and_validate(
                base_url=platform.url,
                headers=platform.headers("fuzz"),
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            )

        call()


# Any JSON value, including what Python's encoder writes but a strict parser refuses (NaN, Infinity) and
# strings with lone UTF-16 surrogates, which JSON escapes can carry but UTF-8 cannot encode.
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_STRING = st.text(st.one_of(st.characters(), SURROGATES), max_size=40)
ANY_NUMBER = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans())
ANY_VALUE = st.one_of(st.none(), ANY_STRING, ANY_NUMBER, st.lists(ANY_NUMBER, max_size=3))


def _body_operations(document: dict) -> list[tuple[str, str, str, dict]]:
    """(method, path, schema name, example body) of every operation that takes a JSON body."""
    schemas, found = document["components"]["schemas"], []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            name = content["schema"]["$ref"].rsplit("/", 1)[-1]
            found.append((method, path, name, schemas[name]))
    return found


def _concrete(path: str) -> str:
    return path.replace("{comparison_id}", "00000000-0000-4000-8000-000000000000")


def test_any_string_or_number_in_any_field_never_gives_a_server_error(platform):
    document = requests.get(f"{platform.url}/openapi.json").json()
    operations = _body_operations(document)
    assert {(m, p) for m, p, _, _ in operations} == {
        ("post", "/v1/generations"),
        ("post", "/v1/comparisons"),
        ("post", "/v1/comparisons/{comparison_id}/playback"),
        ("post", "/v1/comparisons/{comparison_id}/preference"),
        ("post", "/v1/ratings"),
        ("put", "/v1/admin/routing"),
    }
    fields = [(m, p, field) for m, p, _, schema in operations for field in schema["properties"]]
    # the routing table needs the admin scope; the base body lacks `stable`, so no fuzzed table is ever valid
    headers = {
        m: {"Content-Type": "application/json", **platform.headers(k)} for m, k in (("post", "fuzz"), ("put", "full"))
    }

    @given(target=st.sampled_from(fields), value=ANY_VALUE)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(target, value) -> None:
        method, path, field = target
        body = {"prompt": "x", "clip_id": "0" * 32, "choice": "a", "score": 3, "listened_ms": 1, field: value}
        raw = json.dumps(body, allow_nan=True)  # NaN → the NaN token; surrogates → \\udXXX escapes
        reply = requests.request(method, platform.url + _concrete(path), data=raw.encode(), headers=headers[method])
        assert reply.status_code < 500, (method, path, field, value, reply.status_code, reply.text)
        if reply.status_code >= 400:
            assert isinstance(reply.json()["detail"], str)

    call()
