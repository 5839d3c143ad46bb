"""What the rollout controller's ``kserve`` target should do to an InferenceService in each KServe mode.

The endpoints it routes to, the statuses KServe reports, and the merge patches it sends, as
``tests/integration/test_rollout_kserve.py`` expects them."""

import json
from typing import Any

from musicrl.rollout.record import RolloutRecord
from musicrl.rollout.routing import PolicyEndpoint
from tests.utils.kube_standin import serverless_predictor_status, standard_canary_status


NS, NAME, MODEL = "musicrl-test", "generator", "musicgen"  # a namespace no cluster these tests may run in should have
STABLE_URI, CANARY_URI = "s3://models/policy/v3", "s3://models/policy/v4"
BASE_REVISION, CANARY_REVISION = f"{NAME}-predictor-00001", f"{NAME}-predictor-00002"


def address(service: str) -> str:
    return f"{service}.{NS}.svc.cluster.local:80"


STABLE = PolicyEndpoint(address(f"{NAME}-predictor"), MODEL, STABLE_URI, "v3")  # what the gateway's table holds


def canary_name(record: RolloutRecord) -> str:
    """The Standard canary's ``predictor.name``: the rollout id (a hex UUID) as a DNS label, starting with a letter."""
    return record.id if record.id[:1].isalpha() else f"r-{record.id}"


def canary_endpoint(mode: str, name: str) -> PolicyEndpoint:
    service = f"{NAME}-{name}-predictor" if mode == "standard" else f"latest-{NAME}-predictor"
    return PolicyEndpoint(address(service), MODEL, CANARY_URI, "v4")


def stable_during_canary(mode: str) -> PolicyEndpoint:
    """Serverless: the main route splits traffic with the canary, so the gateway calls the old revision's tag route."""
    return STABLE if mode == "standard" else PolicyEndpoint(address(f"prev-{NAME}-predictor"), MODEL, STABLE_URI, "v3")


def promoted_endpoint(mode: str, name: str) -> PolicyEndpoint:
    """Standard: the canary's Deployment and Service are adopted as the stable ones. Serverless: the main route."""
    return canary_endpoint(mode, name) if mode == "standard" else PolicyEndpoint(STABLE.url, MODEL, CANARY_URI, "v4")


def canary_status(mode: str, name: str, ready: bool) -> dict[str, Any]:
    """What KServe reports while the canary's pods start (``ready=False``) and once they serve."""
    if mode == "standard":
        return standard_canary_status(name, ready)
    if ready:
        return serverless_predictor_status(BASE_REVISION, CANARY_REVISION, CANARY_REVISION, tagged=True)
    return serverless_predictor_status(BASE_REVISION, CANARY_REVISION, BASE_REVISION)


def rollout_annotation(state: str) -> str:
    record = {"baseRevision": BASE_REVISION, "stableStorageUri": STABLE_URI, "state": state}
    return json.dumps(record, sort_keys=True)


def start_patch(mode: str, rv: str, name: str) -> dict[str, Any]:
    if mode == "standard":
        predictor = {
            "name": name,
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "musicgen"}, "storageUri": CANARY_URI},
        }
        return {
            "metadata": {"resourceVersion": rv},
            "spec": {"canary": [{"trafficPercent": 10, "predictor": predictor}]},
        }
    annotations = {"serving.kserve.io/enable-tag-routing": "true", "musicrl.io/rollout": rollout_annotation("canary")}
    return {
        "metadata": {"resourceVersion": rv, "annotations": annotations},
        "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": CANARY_URI}}},
    }


def promote_patch(mode: str, rv: str, name: str) -> dict[str, Any]:
    if mode == "standard":
        spec = {"predictor": {"name": name, "model": {"storageUri": CANARY_URI}}, "canary": []}
        return {"metadata": {"resourceVersion": rv}, "spec": spec}
    return {"metadata": {"resourceVersion": rv}, "spec": {"predictor": {"canaryTrafficPercent": None}}}


def rollback_patch(mode: str, rv: str) -> dict[str, Any]:
    if mode == "standard":
        return {"metadata": {"resourceVersion": rv}, "spec": {"canary": []}}
    return {
        "metadata": {"resourceVersion": rv, "annotations": {"musicrl.io/rollout": rollout_annotation("rolled-back")}},
        "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": STABLE_URI}}},
    }
