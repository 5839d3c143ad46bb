"""A stand-in for the Kubernetes API server's InferenceService endpoints: GET and merge-PATCH of
``serving.kserve.io/v1beta1`` ``inferenceservices``, in memory. Serve it with
:func:`tests.utils.recording_http.recording_server`; the code under test reaches it through the real ``kubernetes``
client, so paths, verbs, headers and JSON on the wire are the client's own.

What it does as the API server does, and tests rely on:

- PATCH takes ``application/merge-patch+json`` only (415 for any other patch type) and applies RFC 7386 itself,
  written here apart from ``musicrl.rollout.isvc_patches`` so that a bug there is not mirrored here;
- a ``metadata.resourceVersion`` in a patch is a precondition: a stale one gets 409 and changes nothing;
- every write bumps ``resourceVersion``, and a change of ``spec`` bumps ``generation``;
- ``status`` is a subresource: a patch of the object cannot change it; the test sets it with :meth:`set_status`
  (a status write bumps ``resourceVersion`` too, as KServe's controller writing status does);
- errors are ``Status`` objects (``kind``, ``reason``, ``message``, ``code``).
"""

import copy
from collections.abc import Callable
from itertools import count
from typing import Any

from tests.utils.recording_http import Recorded


GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
PREFIX = f"/apis/{GROUP}/{VERSION}/namespaces/"
MERGE_PATCH = "application/merge-patch+json"


def isvc_path(namespace: str, name: str) -> str:
    """The API path of one InferenceService."""
    return f"{PREFIX}{namespace}/{PLURAL}/{name}"


def status_body(code: int, reason: str, message: str, name: str = "") -> dict[str, Any]:
    """A Kubernetes ``Status`` object, as the API server sends with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": GROUP, "kind": PLURAL},
        "code": code,
    }


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 section 2, MergePatch(Target, Patch)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


class KubeStandIn:
    """InferenceServices held in memory, answering the requests :func:`recording_server` passes on.

    Attributes:
        objects: The stored objects by ``(namespace, name)``.
        outage: When set, every request gets this status (a 5xx) instead of an answer.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._versions = count(1000)
        self.outage: int | None = None

    def add(self, isvc: dict[str, Any]) -> dict[str, Any]:
        """Store ``isvc`` (a copy) as created: fresh resourceVersion, generation 1. Returns the stored copy."""
        stored = copy.deepcopy(isvc)
        meta = stored.setdefault("metadata", {})
        meta.update(resourceVersion=str(next(self._versions)), generation=1)
        self.objects[(meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """A copy of the stored object."""
        return copy.deepcopy(self.objects[(namespace, name)])

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace the object's status, as KServe's controller does through the status subresource."""
        stored = self.objects[(namespace, name)]
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = str(next(self._versions))

    def edit(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to the stored object in place, as another writer would (new resourceVersion)."""
        stored = self.objects[(namespace, name)]
        spec_before = copy.deepcopy(stored.get("spec"))
        change(stored)
        self._bump(stored, spec_before)

    def _bump(self, stored: dict[str, Any], spec_before: Any) -> None:
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        if stored.get("spec") != spec_before:
            stored["metadata"]["generation"] += 1

    def __call__(self, request: Recorded) -> tuple[int, Any]:
        if self.outage is not None:
            return self.outage, status_body(self.outage, "InternalError", "etcdserver: request timed out")
        parts = request.path[len(PREFIX) :].split("/") if request.path.startswith(PREFIX) else []
        if len(parts) != 3 or parts[1] != PLURAL:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        key = (parts[0], parts[2])
        stored = self.objects.get(key)
        if stored is None:
            return 404, status_body(404, "NotFound", f'{PLURAL}.{GROUP} "{key[1]}" not found', key[1])
        if request.method == "GET":
            return 200, copy.deepcopy(stored)
        if request.method == "PATCH":
            return self._patch(request, stored)
        return 405, status_body(405, "MethodNotAllowed", f"the stand-in does not serve {request.method}")

    def _patch(self, request: Recorded, stored: dict[str, Any]) -> tuple[int, Any]:
        name = stored["metadata"]["name"]
        content_type = request.headers.get("content-type", "")
        if content_type != MERGE_PATCH:
            return 415, status_body(
                415, "UnsupportedMediaType", f"the stand-in takes {MERGE_PATCH}, not {content_type}"
            )
        patch = request.json
        if not isinstance(patch, dict):
            return 400, status_body(400, "BadRequest", "a merge patch of an object must be a JSON object", name)
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            message = (
                f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            return 409, status_body(409, "Conflict", message, name)
        patch = {k: v for k, v in patch.items() if k != "status"}  # the status subresource is written apart
        spec_before = copy.deepcopy(stored.get("spec"))
        merged = _merge(stored, patch)
        stored.clear()
        stored.update(merged)
        self._bump(stored, spec_before)
        return 200, copy.deepcopy(stored)


# --- what the tests seed, and what KServe's controller would write into status ----------------------------------


def inference_service(namespace: str, name: str, mode: str, storage_uri: str, **spec: Any) -> dict[str, Any]:
    """A generator InferenceService in ``mode`` (``Standard`` or ``Serverless``) serving ``storage_uri``, with
    extra ``spec`` fields (``canary=[...]``) merged in."""
    predictor = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "model": {"modelFormat": {"name": "musicgen"}, "storageUri": storage_uri},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": predictor, **spec},
    }


def standard_canary_status(canary_name: str, ready: bool) -> dict[str, Any]:
    """Standard mode: the canary entry ``canary_name``'s status and KServe's ``CanaryPredictorReady`` condition."""
    condition = {"type": "CanaryPredictorReady", "status": "True" if ready else "False"}
    return {"canaryStatuses": [{"name": canary_name, "ready": ready}], "conditions": [condition]}


def serverless_predictor_status(base: str, created: str, ready: str, tagged: bool = False) -> dict[str, Any]:
    """Serverless mode: the predictor's revisions: ``base`` behind the ``prev`` tag route, the newest created and
    the newest ready one, and (``tagged``) the ``latest`` tag route to the ready one."""
    traffic = [{"revisionName": base, "tag": "prev", "latestRevision": False}]
    if tagged:
        traffic.append({"revisionName": ready, "tag": "latest", "latestRevision": True})
    component = {"latestCreatedRevision": created, "latestReadyRevision": ready, "traffic": traffic}
    return {"components": {"predictor": component}}
