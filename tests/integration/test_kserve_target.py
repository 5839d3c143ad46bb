"""The kserve rollout target against a Kubernetes API stand-in on loopback, through the real ``kubernetes`` client.

The stand-in (``tests/utils/kube_standin.py``) serves InferenceServices in memory, applies merge patches itself,
refuses stale resourceVersions with 409 and other patch types with 415; every request is recorded, so the tests
assert the method, path, content type and body that reached the "API server".
"""

import asyncio
import copy
import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.error import HTTPError

import pytest
from kubernetes import client

from musicrl.errors import Conflict, InvalidRequest, ModelNotReady, NotFound, UpstreamUnavailable
from musicrl.rollout.kserve_target import KServeTarget, KServeTargetConfig
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.rollout.target import CanarySpec
from tests.utils.kube_standin import KubeStandIn, isvc_path
from tests.utils.recording_http import Recorded, recording_server


NS, NAME = "musicrl", "generator"
PATH = isvc_path(NS, NAME)
STABLE_URI, CANARY_URI = "s3://models/policy/v3", "s3://models/policy/v4"
STABLE = PolicyEndpoint(f"{NAME}-predictor.{NS}.svc.cluster.local:80", "musicgen", STABLE_URI, "v3")
CANARY = CanarySpec(rollout_id="rollout-7", model_uri=CANARY_URI, version="v4", traffic_percent=10)


def isvc(mode: str = "Standard", **predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "namespace": NS, "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "model": {"modelFormat": {"name": "musicgen"}, "storageUri": STABLE_URI},
                **predictor,
            }
        },
    }


def serverless_status(created: str, ready: str, latest_tag: str | None = None) -> dict[str, Any]:
    traffic = [{"revisionName": "generator-predictor-00001", "tag": "prev", "percent": 90, "latestRevision": False}]
    if latest_tag:
        traffic.append({"revisionName": latest_tag, "tag": "latest", "percent": 10, "latestRevision": True})
    component = {
        "latestCreatedRevision": created,
        "latestReadyRevision": ready,
        "latestRolledoutRevision": "generator-predictor-00001",
        "traffic": traffic,
    }
    return {"components": {"predictor": component}}


def standard_status(name: str, ready: bool, condition_ready: bool | None = None) -> dict[str, Any]:
    all_ready = ready if condition_ready is None else condition_ready
    condition = {"type": "CanaryPredictorReady", "status": "True" if all_ready else "False"}
    return {"canaryStatuses": [{"name": name, "ready": ready, "trafficPercent": 10}], "conditions": [condition]}


@pytest.fixture
def kube() -> Iterator[tuple[KubeStandIn, list[Recorded], str]]:
    stand_in = KubeStandIn()
    with recording_server(stand_in) as (url, recorded):
        yield stand_in, recorded, url


def target(url: str, mode: str = "standard", **overrides: Any) -> KServeTarget:
    configuration = client.Configuration()
    configuration.host = url
    settings: dict[str, Any] = dict(namespace=NS, isvc_name=NAME, model_name="musicgen", mode=mode, ready_poll_s=0.01)
    return KServeTarget(KServeTargetConfig(**(settings | overrides)), configuration)


def patches_sent(recorded: list[Recorded]) -> list[Recorded]:
    return [r for r in recorded if r.method == "PATCH"]


def assert_merge_patch(request: Recorded, body: dict[str, Any]) -> None:
    assert (request.method, request.path) == ("PATCH", PATH)
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert request.param("fieldManager") == "musicrl-rollout"
    assert request.json == body


# --- Standard mode ----------------------------------------------------------------------------------------------


def test_standard_start_adds_a_named_canary_entry_and_returns_its_service(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc())
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    endpoint = asyncio.run(target(url).start_canary(CANARY, STABLE))
    assert endpoint == PolicyEndpoint(
        "generator-rollout-7-predictor.musicrl.svc.cluster.local:80", "musicgen", CANARY_URI, "v4"
    )
    get, patch = recorded
    assert (get.method, get.path) == ("GET", PATH)
    canary_predictor = {
        "name": "rollout-7",
        "minReplicas": 1,
        "model": {"modelFormat": {"name": "musicgen"}, "storageUri": CANARY_URI},
    }
    assert_merge_patch(
        patch,
        {
            "metadata": {"resourceVersion": rv},
            "spec": {"canary": [{"trafficPercent": 10, "predictor": canary_predictor}]},
        },
    )
    assert stand_in.get(NS, NAME)["spec"]["canary"] == [{"trafficPercent": 10, "predictor": canary_predictor}]
    # a restarted controller repeats the call: it reads, finds the canary, and patches nothing
    assert asyncio.run(target(url).start_canary(CANARY, STABLE)) == endpoint
    assert [r.method for r in recorded] == ["GET", "PATCH", "GET"]


def test_standard_readiness_follows_the_canary_status(kube):
    stand_in, _, url = kube
    stand_in.add(isvc())
    kserve = target(url)
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False  # KServe has not reported on it yet
    stand_in.set_status(NS, NAME, standard_status("rollout-7", ready=False))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False
    stand_in.set_status(NS, NAME, standard_status("some-other-canary", ready=True))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False
    stand_in.set_status(NS, NAME, standard_status("rollout-7", ready=True, condition_ready=False))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False  # KServe's CanaryPredictorReady must agree
    stand_in.set_status(NS, NAME, standard_status("rollout-7", ready=True))
    assert asyncio.run(kserve.canary_ready(endpoint)) is True
    asyncio.run(kserve.wait_ready(endpoint))


def test_standard_promote_moves_the_canary_predictor_and_empties_spec_canary(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc())
    kserve = target(url)
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    promoted = asyncio.run(kserve.promote(endpoint, STABLE))
    assert promoted == endpoint  # the canary's Deployment is adopted as the stable one: same Service
    assert_merge_patch(
        patches_sent(recorded)[-1],
        {
            "metadata": {"resourceVersion": rv},
            "spec": {"predictor": {"name": "rollout-7", "model": {"storageUri": CANARY_URI}}, "canary": []},
        },
    )
    spec = stand_in.get(NS, NAME)["spec"]
    assert spec == {
        "predictor": isvc()["spec"]["predictor"] | {"name": "rollout-7", "model": spec["predictor"]["model"]},
        "canary": [],
    }
    assert spec["predictor"]["model"]["storageUri"] == CANARY_URI and spec["predictor"]["maxReplicas"] == 3
    assert asyncio.run(kserve.promote(endpoint, STABLE)) == endpoint  # repeated: no patch
    assert len(patches_sent(recorded)) == 2
    asyncio.run(kserve.check_idle())


def test_standard_rollback_empties_spec_canary_and_a_repeat_sends_nothing(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc())
    kserve = target(url)
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    asyncio.run(kserve.rollback(endpoint, STABLE))
    assert_merge_patch(patches_sent(recorded)[-1], {"metadata": {"resourceVersion": rv}, "spec": {"canary": []}})
    assert stand_in.get(NS, NAME)["spec"] == isvc()["spec"] | {"canary": []}
    asyncio.run(kserve.rollback(endpoint, STABLE))
    assert len(patches_sent(recorded)) == 2
    asyncio.run(kserve.check_idle())


# --- Serverless mode --------------------------------------------------------------------------------------------


def test_serverless_start_sets_the_model_and_traffic_share_and_returns_the_latest_tag_route(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc("Serverless"))
    stand_in.set_status(NS, NAME, serverless_status("generator-predictor-00001", "generator-predictor-00001"))
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    endpoint = asyncio.run(target(url, "serverless").start_canary(CANARY, STABLE))
    assert endpoint.url == "latest-generator-predictor.musicrl.svc.cluster.local:80"
    record = {"baseRevision": "generator-predictor-00001", "stableStorageUri": STABLE_URI, "state": "canary"}
    assert_merge_patch(
        patches_sent(recorded)[0],
        {
            "metadata": {
                "resourceVersion": rv,
                "annotations": {
                    "serving.kserve.io/enable-tag-routing": "true",
                    "musicrl.io/rollout": json.dumps(record, sort_keys=True),
                },
            },
            "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": CANARY_URI}}},
        },
    )
    predictor = stand_in.get(NS, NAME)["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10 and predictor["model"]["storageUri"] == CANARY_URI
    assert predictor["model"]["modelFormat"] == {"name": "musicgen"}  # merged, not replaced


def test_serverless_readiness_waits_for_a_new_ready_revision_behind_the_latest_tag(kube):
    stand_in, _, url = kube
    tagged = isvc("Serverless")
    tagged["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] = "true"
    stand_in.add(tagged)
    # tag routing on already: KServe tags the only revision "latest" too, so a stale status looks complete
    stable_only = "generator-predictor-00001"
    stand_in.set_status(NS, NAME, serverless_status(stable_only, stable_only, latest_tag=stable_only))
    kserve = target(url, "serverless", ready_timeout_s=0.05)
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    # before KServe reconciles the patch, created == ready == the stable revision: that is not the canary
    assert asyncio.run(kserve.canary_ready(endpoint)) is False
    with pytest.raises(ModelNotReady, match=r"the canary s3://models/policy/v4 on musicrl/generator was not ready"):
        asyncio.run(kserve.wait_ready(endpoint))
    stand_in.set_status(NS, NAME, serverless_status("generator-predictor-00002", "generator-predictor-00001"))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False  # created, not ready
    stand_in.set_status(NS, NAME, serverless_status("generator-predictor-00002", "generator-predictor-00002"))
    assert asyncio.run(kserve.canary_ready(endpoint)) is False  # ready, but no latest tag route yet
    ready = serverless_status(
        "generator-predictor-00002", "generator-predictor-00002", latest_tag="generator-predictor-00002"
    )
    stand_in.set_status(NS, NAME, ready)
    assert asyncio.run(kserve.canary_ready(endpoint)) is True


def test_serverless_promote_removes_canary_traffic_percent(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc("Serverless"))
    kserve = target(url, "serverless")
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    promoted = asyncio.run(kserve.promote(endpoint, STABLE))
    assert promoted == PolicyEndpoint("generator-predictor.musicrl.svc.cluster.local:80", "musicgen", CANARY_URI, "v4")
    assert_merge_patch(
        patches_sent(recorded)[-1],
        {"metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": None}}},
    )
    assert "canaryTrafficPercent" not in stand_in.get(NS, NAME)["spec"]["predictor"]
    assert asyncio.run(kserve.promote(endpoint, STABLE)) == promoted
    assert len(patches_sent(recorded)) == 2
    asyncio.run(kserve.check_idle())


def test_serverless_rollback_pins_to_the_previous_revision_and_a_new_rollout_may_follow(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc("Serverless"))
    kserve = target(url, "serverless")
    endpoint = asyncio.run(kserve.start_canary(CANARY, STABLE))
    rv = stand_in.get(NS, NAME)["metadata"]["resourceVersion"]
    asyncio.run(kserve.rollback(endpoint, STABLE))
    sent = patches_sent(recorded)[-1]
    assert_merge_patch(
        sent,
        {
            "metadata": {
                "resourceVersion": rv,
                "annotations": {"musicrl.io/rollout": sent.json["metadata"]["annotations"]["musicrl.io/rollout"]},
            },
            "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": STABLE_URI}}},
        },
    )
    assert json.loads(sent.json["metadata"]["annotations"]["musicrl.io/rollout"])["state"] == "rolled-back"
    predictor = stand_in.get(NS, NAME)["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 0 and predictor["model"]["storageUri"] == STABLE_URI
    asyncio.run(kserve.rollback(endpoint, STABLE))
    assert len(patches_sent(recorded)) == 2
    asyncio.run(kserve.check_idle())
    following = CanarySpec(rollout_id="rollout-8", model_uri="s3://models/policy/v5", version="v5", traffic_percent=5)
    asyncio.run(kserve.start_canary(following, STABLE))
    assert stand_in.get(NS, NAME)["spec"]["predictor"]["canaryTrafficPercent"] == 5


# --- refusals and errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, seeded, message",
    [
        (
            "standard",
            isvc()
            | {
                "spec": isvc()["spec"]
                | {
                    "canary": [
                        {
                            "trafficPercent": 5,
                            "predictor": {
                                "name": "v9",
                                "model": {"modelFormat": {"name": "musicgen"}, "storageUri": "s3://x"},
                            },
                        }
                    ]
                }
            },
            r"InferenceService musicrl/generator already runs the canary 'v9' in spec\.canary",
        ),
        (
            "serverless",
            isvc("Serverless", canaryTrafficPercent=30),
            r"InferenceService musicrl/generator already splits traffic to a canary revision "
            r"\(spec\.predictor\.canaryTrafficPercent=30",
        ),
    ],
)
def test_a_canary_in_flight_makes_check_idle_and_start_refuse(kube, mode, seeded, message):
    stand_in, recorded, url = kube
    stand_in.add(seeded)
    kserve = target(url, mode)
    with pytest.raises(
        Conflict, match=message + r".*promote or roll it back before starting another.*KServe issue 2130"
    ):
        asyncio.run(kserve.check_idle())
    with pytest.raises(Conflict, match=message):
        asyncio.run(kserve.start_canary(CANARY, STABLE))
    assert patches_sent(recorded) == []


def test_a_missing_inference_service_is_not_found_with_a_sentence(kube):
    _, recorded, url = kube
    with pytest.raises(NotFound, match=r"InferenceService musicrl/generator does not exist \(404 to read\): check"):
        asyncio.run(target(url).check_idle())
    assert [(r.method, r.path) for r in recorded] == [("GET", PATH)]


class EditAfterFirstRead:
    """Routes to the stand-in; right after the first GET, another writer edits the object."""

    def __init__(self, stand_in: KubeStandIn, change: Callable[[dict[str, Any]], None]) -> None:
        self.stand_in, self.change, self.done = stand_in, change, False

    def __call__(self, request: Recorded) -> tuple[int, Any]:
        answer = self.stand_in(request)
        if request.method == "GET" and not self.done:
            self.done = True
            self.stand_in.edit(NS, NAME, self.change)
        return answer


def test_a_concurrent_edit_between_read_and_patch_is_a_conflict_not_an_overwrite():
    stand_in = KubeStandIn()
    stand_in.add(isvc())

    def scale_up(obj: dict[str, Any]) -> None:
        obj["spec"]["predictor"]["minReplicas"] = 2

    with recording_server(EditAfterFirstRead(stand_in, scale_up)) as (url, recorded):
        kserve = target(url)
        with pytest.raises(
            Conflict, match=r"InferenceService musicrl/generator changed while .* the object has been modified"
        ):
            asyncio.run(kserve.start_canary(CANARY, STABLE))
        assert "canary" not in stand_in.get(NS, NAME)["spec"]  # refused whole ...
        assert stand_in.get(NS, NAME)["spec"]["predictor"]["minReplicas"] == 2  # ... and the other edit kept
        asyncio.run(kserve.start_canary(CANARY, STABLE))  # the repeat reads afresh and goes through
    assert [r.method for r in recorded] == ["GET", "PATCH", "GET", "PATCH"]
    assert recorded[1].json["metadata"]["resourceVersion"] != recorded[3].json["metadata"]["resourceVersion"]
    assert stand_in.get(NS, NAME)["spec"]["predictor"]["minReplicas"] == 2


def test_api_outages_and_an_unreachable_server_are_upstream_unavailable(kube):
    stand_in, _, url = kube
    stand_in.add(isvc())
    stand_in.outage = 503
    with pytest.raises(
        UpstreamUnavailable, match=r"could not read InferenceService musicrl/generator \(HTTP 503: etcdserver"
    ):
        asyncio.run(target(url).check_idle())
    with recording_server(stand_in) as (closed_url, _):
        pass  # the port is closed again once the block ends
    with pytest.raises(UpstreamUnavailable, match=r"could not reach the Kubernetes API server to read"):
        asyncio.run(target(closed_url).check_idle())


def test_a_patch_that_would_leave_an_invalid_object_is_not_sent(kube):
    stand_in, recorded, url = kube
    broken = isvc("Serverless")
    del broken["spec"]["predictor"]["model"]["modelFormat"]
    stand_in.add(broken)
    # the serverless patch only sets storageUri, which fits the patch schema: the patched object is what fails
    with pytest.raises(
        InvalidRequest,
        match=r"generator after the patch does not fit the InferenceService schema at \$\.spec\.predictor\.model: "
        "'modelFormat' is a required property",
    ):
        asyncio.run(target(url, "serverless").start_canary(CANARY, STABLE))
    # a Standard canary entry copies the predictor whole, so the patch itself already fails
    stand_in.add(broken | {"metadata": broken["metadata"] | {"annotations": {}}})
    with pytest.raises(
        InvalidRequest, match=r"the merge patch does not fit .* \$\.spec\.canary\[0\]\.predictor\.model"
    ):
        asyncio.run(target(url).start_canary(CANARY, STABLE))
    assert patches_sent(recorded) == []


def test_a_mode_that_does_not_match_the_inference_service_is_refused(kube):
    stand_in, recorded, url = kube
    stand_in.add(isvc("Knative"))
    with pytest.raises(
        InvalidRequest, match=r"runs in Knative mode but the kserve target is configured with mode='standard'"
    ):
        asyncio.run(target(url).start_canary(CANARY, STABLE))
    assert patches_sent(recorded) == []


def test_the_stand_in_refuses_other_patch_types_so_the_content_type_checks_mean_something(kube):
    stand_in, _, url = kube
    stand_in.add(isvc())
    body = json.dumps([{"op": "replace", "path": "/spec/predictor/minReplicas", "value": 3}]).encode()
    request = urllib.request.Request(
        url + PATH, body, method="PATCH", headers={"Content-Type": "application/json-patch+json"}
    )
    with pytest.raises(HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 415
    assert copy.deepcopy(stand_in.get(NS, NAME)["spec"]) == isvc()["spec"]


def test_config_refuses_bad_values_with_a_sentence_naming_the_field():
    with pytest.raises(InvalidRequest, match=r"KServeTargetConfig\.isvc_name must be a DNS label"):
        KServeTargetConfig(namespace=NS, isvc_name="Generator_1", model_name="musicgen")
    with pytest.raises(InvalidRequest, match=r"KServeTargetConfig\.mode must be 'standard' or 'serverless'"):
        KServeTargetConfig(namespace=NS, isvc_name=NAME, model_name="musicgen", mode="raw")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"KServeTargetConfig\.canary_replicas must be at least 1"):
        KServeTargetConfig(namespace=NS, isvc_name=NAME, model_name="musicgen", canary_replicas=0)
    with pytest.raises(InvalidRequest, match=r"KServeTargetConfig\.cluster_domain must be a bare DNS suffix"):
        KServeTargetConfig(namespace=NS, isvc_name=NAME, model_name="musicgen", cluster_domain="http://cluster.local")
