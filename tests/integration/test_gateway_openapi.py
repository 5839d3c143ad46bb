"""Property-based requests generated from the gateway's own OpenAPI document (schemathesis).

Every operation is called with generated valid and invalid inputs: no reply may be a 5xx, and every reply
must match the status codes and bodies the document declares.
"""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
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
