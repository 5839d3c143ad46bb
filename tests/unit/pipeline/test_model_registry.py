"""Recording policy versions in a Kubeflow Model Registry through the real ``model-registry`` client.

No Model Registry runs here: the stand-in is a real HTTP server on loopback implementing the few REST
endpoints the client calls for ``register_model`` (find or create the registered model, create the version,
attach the artifact), recording the requests.
"""

import datetime
import sys
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from musicrl.errors import InvalidRequest, UpstreamUnavailable
from musicrl.pipeline.model_registry import ModelRegistryConfig, model_registry_from_env
from musicrl.pipeline.registry import PolicyRegistry
from tests.utils.recording_http import Recorded, recording_server


API = "/api/model_registry/v1"


class ModelRegistryStandIn:
    """Registered models, versions and artifacts in memory, answered as the Model Registry answers."""

    def __init__(self) -> None:
        self.ids = count(1)
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, list[dict[str, Any]]] = {}

    def _new(self, body: dict[str, Any]) -> dict[str, Any]:
        now = "1764558000000"
        return body | {"id": str(next(self.ids)), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}

    def __call__(self, request: Recorded) -> tuple[int, Any]:
        path, method = request.path, request.method
        if method == "GET" and path == f"{API}/registered_models":
            items = list(self.models.values())
            return 200, {"items": items, "nextPageToken": "", "pageSize": 1, "size": len(items)}
        if method == "GET" and path == f"{API}/registered_model":
            found = [m for m in self.models.values() if m["name"] == request.param("name")]
            return (200, found[0]) if found else (404, {"code": "404", "message": "not found"})
        if method == "POST" and path == f"{API}/registered_models":
            model = self._new(request.json)
            self.models[model["id"]] = model
            return 201, model
        if method == "GET" and path == f"{API}/model_version":
            found = [
                v
                for v in self.versions.values()
                if v["name"] == request.param("name") and v["registeredModelId"] == request.param("parentResourceId")
            ]
            return (200, found[0]) if found else (404, {"code": "404", "message": "not found"})
        if method == "POST" and path == f"{API}/model_versions":
            version = self._new(request.json)
            self.versions[version["id"]] = version
            return 201, version
        if method == "POST" and path.startswith(f"{API}/model_versions/") and path.endswith("/artifacts"):
            artifact = self._new(request.json)
            self.artifacts.setdefault(path.split("/")[-2], []).append(artifact)
            return 200, artifact
        return 404, {"code": "404", "message": f"no route {method} {path}"}


@pytest.fixture
def model_registry() -> Iterator[tuple[ModelRegistryStandIn, str, list[Recorded]]]:
    stand_in = ModelRegistryStandIn()
    with recording_server(stand_in) as (url, recorded):
        yield stand_in, url, recorded


def test_each_new_policy_version_becomes_a_model_registry_version(memory_filesystem, model_registry):
    stand_in, url, recorded = model_registry
    config = ModelRegistryConfig(url, token="t0ken")
    registry = PolicyRegistry("memory://artifacts/registry", model_registry=config)
    when = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
    first = registry.register("s3://runs/1/ckpt", parent_uri="hf://facebook/musicgen-small", metrics={"kl": 0.1},
                              created_at=when)  # fmt: skip
    registry.register("s3://runs/2/ckpt", parent_uri=first.model_uri, created_at=when)

    (model,) = stand_in.models.values()
    assert model["name"] == "musicrl-policy"
    versions = sorted(stand_in.versions.values(), key=lambda v: v["name"])
    assert [v["name"] for v in versions] == ["v1", "v2"]
    properties = versions[0]["customProperties"]
    assert properties["parent_uri"]["string_value"] == "hf://facebook/musicgen-small"
    assert properties["metric/kl"]["double_value"] == 0.1
    assert properties["musicrl_registry_url"]["string_value"] == "memory://artifacts/registry"
    (artifact,) = stand_in.artifacts[versions[0]["id"]]
    assert (artifact["uri"], artifact["modelFormatName"]) == ("s3://runs/1/ckpt", "musicgen")
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in recorded)
    # the registered model is created once and found the second time
    assert sum(r.method == "POST" and r.path == f"{API}/registered_models" for r in recorded) == 1


def test_a_refusing_model_registry_says_the_version_is_still_registered_here(memory_filesystem):
    with recording_server(lambda request: (500, {"code": "500", "message": "database is down"})) as (url, _):
        registry = PolicyRegistry("memory://registry", model_registry=ModelRegistryConfig(url, token="t"))
        with pytest.raises(UpstreamUnavailable, match=r"v1 is registered in memory://registry, but recording it"):
            registry.register("s3://runs/1")
    assert [v.version for v in registry.list()] == ["v1"]


def test_a_configured_model_registry_without_its_client_is_a_clear_error(memory_filesystem, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_registry", None)  # as if the package were not installed
    registry = PolicyRegistry("memory://registry", model_registry=ModelRegistryConfig("http://mr:8080"))
    with pytest.raises(InvalidRequest, match="the model-registry package is not installed"):
        registry.register("s3://runs/1")


def test_the_model_registry_is_configured_from_the_environment_or_not_at_all():
    assert model_registry_from_env({}) is None
    config = model_registry_from_env(
        {"MUSICRL_MODEL_REGISTRY_URL": "https://mr.example:8443", "MUSICRL_MODEL_REGISTRY_MODEL_NAME": "policy"}
    )
    assert config == ModelRegistryConfig("https://mr.example:8443", model_name="policy")
    with pytest.raises(InvalidRequest, match="http"):
        model_registry_from_env({"MUSICRL_MODEL_REGISTRY_URL": "mr:8080"})
