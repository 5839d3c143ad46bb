"""JSON merge patches that start, promote and roll back a canary on a KServe InferenceService, and their schema.

Pure functions over plain dicts (the API server's JSON, never KServe's Python models, which accept invalid values).
Each builder takes the InferenceService as last read and returns the merge patch (RFC 7386) to send, or None when
the object is already in the wanted state: a restarted controller repeats its last step, so "already done" is a
normal outcome. Every patch carries the ``metadata.resourceVersion`` it was computed from, so the API server
answers 409 to it when someone changed the object in between, instead of merging over their change.

Two deployment modes (KServe's v1beta1 API reference; ``pkg/apis/serving/v1beta1`` in kserve/kserve):

- **Standard** (RawDeployment, KServe >= 0.20): a canary is an entry ``{trafficPercent, predictor}`` of
  ``spec.canary``; its ``predictor.name`` (required there) names its Deployment and Service
  ``{isvc}-{name}-predictor``. Promotion moves the canary's predictor, name included, to ``spec.predictor`` and
  empties ``spec.canary``, so KServe adopts the canary's Deployment without restarting it; rollback empties
  ``spec.canary``.
- **Serverless** (Knative): the predictor's new model is the canary and ``spec.predictor.canaryTrafficPercent`` its
  share; with ``serving.kserve.io/enable-tag-routing: "true"`` Knative tags the new revision ``latest`` and the
  last fully rolled-out one ``prev``. Promotion removes the field; rollback sets it to 0, which pins all traffic to
  ``prev`` (KServe's "rollback and pin"), and restores the stable model in the spec.
"""

import copy
import functools
import hashlib
import json
import logging
import re
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from musicrl.errors import Conflict, InvalidRequest, NotFound


logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
# Serverless only: what the canary replaced and which revision served before it (JSON). Written only in patches that
# change the revision template anyway (start, rollback), because KServe copies the InferenceService's annotations
# into that template and any other change to them would start a new revision (so promotion leaves it as it is).
ROLLOUT_ANNOTATION = "musicrl.io/rollout"

# Fields of the stable predictor a Standard canary entry must not carry: KServe's validator refuses autoscaling and
# workerSpec on canaries (they run fixed replicas), canaryTrafficPercent is the serverless mechanism, and name and
# minReplicas are set for the canary itself.
_NOT_COPIED_TO_CANARY = frozenset(
    {
        "name",
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "autoScaling",
        "workerSpec",
        "canaryTrafficPercent",
    }
)
# Scaling the promoted predictor takes back from the stable one: the canary ran fixed replicas only because KServe
# requires it of canaries.
_STABLE_SCALING = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling")


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``.

    Hand-written because it is a dozen lines and the alternatives are worse: ``jsonpatch`` (in our lock) writes
    RFC 6902 operation lists, not merge patches, and the RFC 7386 package on PyPI (``json-merge-patch``, 0.x) is a
    little-used project — not worth a dependency for this.

    Args:
        old: The document as it is.
        new: The document as it should be; it must hold no null, which a merge patch cannot express (null
            means "remove").

    Returns:
        The patch: keys of ``old`` absent from ``new`` map to None, changed objects recurse, anything else
        (arrays included, which merge patches replace whole) is copied from ``new``.

    Raises:
        InvalidRequest: ``new`` holds a null where it differs from ``old``.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        if _holds_null(new):
            raise InvalidRequest(f"a merge patch cannot set a null value (null removes a key), got {new!r}")
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = merge_patch(old.get(key), value)
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the JSON merge patch ``patch`` applied (RFC 7386 section 2); neither argument is changed."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def _holds_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_holds_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_null(v) for v in value)
    return False


def canary_name(rollout_id: str, isvc_name: str) -> str:
    """The Standard-mode canary's ``predictor.name``: the rollout id as a DNS label, so a retry finds the same one.

    The canary's Service ``{isvc}-{name}-predictor`` must be a DNS label of at most 63 characters; a longer id is
    cut and suffixed with 8 hex digits of its SHA-256, so distinct ids keep distinct names.

    Raises:
        InvalidRequest: The InferenceService name leaves no room for a canary name.
    """
    room = 63 - len(isvc_name) - len("--predictor")
    if room < 10:
        raise InvalidRequest(
            f"InferenceService name {isvc_name!r} is too long to name canaries ({{isvc}}-{{name}}-predictor must fit "
            f"63 characters): use a name of at most {63 - len('--predictor') - 10} characters"
        )
    slug = re.sub(r"[^a-z0-9]+", "-", rollout_id.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"r-{slug}".rstrip("-")  # a DNS-1035 label (Service names) starts with a letter
    if len(slug) > room:
        digest = hashlib.sha256(rollout_id.encode()).hexdigest()[:8]
        slug = f"{slug[: room - 9].rstrip('-')}-{digest}"
    return slug


def where(isvc: dict[str, Any]) -> str:
    """``namespace/name`` of an InferenceService, for messages."""
    meta = isvc.get("metadata") or {}
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    """``spec.predictor``, which must use the ``model`` form with a ``storageUri``.

    Raises:
        InvalidRequest: It does not (a framework-specific predictor, or several storage URIs).
    """
    found = (isvc.get("spec") or {}).get("predictor") or {}
    if not isinstance(found.get("model"), dict) or not found["model"].get("storageUri"):
        raise InvalidRequest(
            f"InferenceService {where(isvc)} has no spec.predictor.model.storageUri: the rollout controller swaps "
            "models through that field, so declare the predictor in the model form (modelFormat, storageUri)"
        )
    return found


def storage_uri(predictor_spec: dict[str, Any]) -> str | None:
    """The ``model.storageUri`` of a predictor spec."""
    return (predictor_spec.get("model") or {}).get("storageUri")


def rollout_record(isvc: dict[str, Any]) -> dict[str, Any]:
    """The serverless rollout annotation's content (``{}`` when absent or unreadable)."""
    raw = ((isvc.get("metadata") or {}).get("annotations") or {}).get(ROLLOUT_ANNOTATION)
    if not raw:
        return {}
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("ignoring the unreadable %s annotation of %s: %r", ROLLOUT_ANNOTATION, where(isvc), raw)
        return {}
    return record if isinstance(record, dict) else {}


def canary_in_flight(isvc: dict[str, Any]) -> str | None:
    """A sentence naming the canary the InferenceService runs, or None when it runs none.

    A serverless predictor pinned by this module's rollback (``canaryTrafficPercent`` 0, stable model restored, the
    rollout annotation saying so) is idle: the next canary starts from the stable model's configuration.
    """
    spec = isvc.get("spec") or {}
    canaries = spec.get("canary") or []
    if canaries:
        names = ", ".join(repr((c.get("predictor") or {}).get("name", "?")) for c in canaries)
        return f"InferenceService {where(isvc)} already runs the canary {names} in spec.canary"
    stable = spec.get("predictor") or {}
    percent = stable.get("canaryTrafficPercent")
    if percent is None or percent >= 100:
        return None
    record = rollout_record(isvc)
    if percent == 0 and record.get("state") == "rolled-back" and record.get("stableStorageUri") == storage_uri(stable):
        return None
    return (
        f"InferenceService {where(isvc)} already splits traffic to a canary revision "
        f"(spec.predictor.canaryTrafficPercent={percent}, model {storage_uri(stable)})"
    )


def ensure_idle(isvc: dict[str, Any]) -> None:
    """Raise :class:`Conflict` when the InferenceService already runs a canary (see :func:`canary_in_flight`)."""
    busy = canary_in_flight(isvc)
    if busy:
        raise Conflict(
            f"{busy}; promote or roll it back before starting another: a second canary over it leaks routes "
            "(KServe issue 2130)"
        )


def _versioned(isvc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` with the resourceVersion of ``isvc``, so a concurrent edit makes the API server answer 409."""
    metadata = dict(patch.get("metadata") or {})
    metadata["resourceVersion"] = isvc["metadata"]["resourceVersion"]
    return {**patch, "metadata": metadata}


def _find_canary(canaries: list[dict[str, Any]], model_uri: str) -> dict[str, Any] | None:
    return next((c for c in canaries if storage_uri(c.get("predictor") or {}) == model_uri), None)


def standard_start_patch(
    isvc: dict[str, Any], *, name: str, model_uri: str, traffic_percent: int, replicas: int
) -> dict[str, Any] | None:
    """Add the canary ``name`` serving ``model_uri`` to ``spec.canary`` (Standard mode).

    The entry's predictor is the stable one with the canary's model, name and replicas, minus the fields KServe
    refuses on canaries. Its replicas are set explicitly: KServe otherwise sizes a canary as
    ceil(stable replicas × trafficPercent / 100), which is no pod at all at 0 %.

    Raises:
        Conflict: Another canary is in flight, or ``name`` is the stable predictor's.
        InvalidRequest: The stable predictor already serves ``model_uri``, or ``replicas`` exceeds its minReplicas.
    """
    stable = predictor(isvc)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    ours = _find_canary(canaries, model_uri)
    if ours is not None and (ours.get("predictor") or {}).get("name") == name:
        if ours.get("trafficPercent") == traffic_percent:
            return None
        updated = [dict(c, trafficPercent=traffic_percent) if c is ours else c for c in canaries]
        return _versioned(isvc, {"spec": {"canary": updated}})
    ensure_idle(isvc)
    if storage_uri(stable) == model_uri:
        raise InvalidRequest(
            f"InferenceService {where(isvc)} already serves {model_uri}: a canary needs another model"
        )
    if stable.get("name") == name:
        raise Conflict(f"the canary name {name!r} is the stable predictor's on {where(isvc)}: start a new rollout id")
    stable_min = stable.get("minReplicas", 1)  # KServe's default when the stable predictor sets none
    if replicas > stable_min:
        raise InvalidRequest(
            f"canary_replicas={replicas} exceeds the stable predictor's minReplicas ({stable_min}) on {where(isvc)}, "
            "which KServe refuses: lower canary_replicas or raise the stable minReplicas"
        )
    canary = {key: copy.deepcopy(value) for key, value in stable.items() if key not in _NOT_COPIED_TO_CANARY}
    canary["model"]["storageUri"] = model_uri
    canary.update(name=name, minReplicas=replicas)
    return _versioned(isvc, {"spec": {"canary": [{"trafficPercent": traffic_percent, "predictor": canary}]}})


def standard_promote_patch(isvc: dict[str, Any], *, model_uri: str) -> tuple[dict[str, Any] | None, str]:
    """Move the canary serving ``model_uri`` to ``spec.predictor`` and drop it from ``spec.canary`` (Standard mode).

    The patch replaces the predictor rather than merging into it: keys of the old predictor that the canary's lacks
    are nulled (a merge patch would otherwise keep them). The stable predictor's scaling is kept.

    Returns:
        ``(patch or None when already promoted, the promoted predictor's name)``.

    Raises:
        NotFound: No canary serves ``model_uri`` and the stable predictor does not either.
    """
    stable = predictor(isvc)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    ours = _find_canary(canaries, model_uri)
    if ours is None:
        if not canaries and storage_uri(stable) == model_uri:
            return None, str(stable.get("name") or "")
        raise NotFound(f"InferenceService {where(isvc)} has no canary serving {model_uri} to promote")
    promoted = copy.deepcopy(ours["predictor"])
    for key in _STABLE_SCALING:
        if key in stable:
            promoted[key] = copy.deepcopy(stable[key])
        else:
            promoted.pop(key, None)
    old = {"predictor": stable, "canary": canaries}
    new = {"predictor": promoted, "canary": [c for c in canaries if c is not ours]}
    return _versioned(isvc, {"spec": merge_patch(old, new)}), str(promoted["name"])


def standard_rollback_patch(isvc: dict[str, Any], *, model_uri: str) -> dict[str, Any] | None:
    """Drop the canary serving ``model_uri`` from ``spec.canary`` (Standard mode); None when it is gone already.

    Raises:
        Conflict: The canary was promoted already (the stable predictor serves ``model_uri``).
    """
    stable = predictor(isvc)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    ours = _find_canary(canaries, model_uri)
    if ours is None:
        if storage_uri(stable) == model_uri:
            raise Conflict(f"the canary {model_uri} was promoted on {where(isvc)} already; roll forward instead")
        return None
    return _versioned(isvc, {"spec": {"canary": [c for c in canaries if c is not ours]}})


def serverless_start_patch(isvc: dict[str, Any], *, model_uri: str, traffic_percent: int) -> dict[str, Any] | None:
    """Serve ``model_uri`` as the predictor's new revision with ``canaryTrafficPercent`` and tag routing on.

    The rollout annotation records the stable model and the revision that served it, which tell a later rollback
    what to restore and the readiness check which revision is not the canary's.

    Raises:
        Conflict: Another canary is in flight.
        InvalidRequest: The predictor already serves ``model_uri``.
    """
    stable = predictor(isvc)
    percent = stable.get("canaryTrafficPercent")
    record = rollout_record(isvc)
    if storage_uri(stable) == model_uri and record.get("state") == "canary" and percent is not None:
        if percent == traffic_percent:
            return None
        return _versioned(isvc, {"spec": {"predictor": {"canaryTrafficPercent": traffic_percent}}})
    ensure_idle(isvc)
    if storage_uri(stable) == model_uri:
        raise InvalidRequest(
            f"InferenceService {where(isvc)} already serves {model_uri}: a canary needs another model"
        )
    component = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    record = {
        "state": "canary",
        "stableStorageUri": storage_uri(stable),
        "baseRevision": component.get("latestCreatedRevision", ""),
    }
    annotations = {TAG_ROUTING: "true", ROLLOUT_ANNOTATION: json.dumps(record, sort_keys=True)}
    spec = {"predictor": {"canaryTrafficPercent": traffic_percent, "model": {"storageUri": model_uri}}}
    return _versioned(isvc, {"metadata": {"annotations": annotations}, "spec": spec})


def serverless_promote_patch(isvc: dict[str, Any], *, model_uri: str) -> dict[str, Any] | None:
    """Remove ``canaryTrafficPercent``, so the canary's revision takes all traffic; None when it has already.

    Raises:
        NotFound: The predictor does not serve ``model_uri``.
    """
    stable = predictor(isvc)
    if storage_uri(stable) != model_uri:
        served = storage_uri(stable)
        raise NotFound(
            f"InferenceService {where(isvc)} serves {served}, not the canary {model_uri}: nothing to promote"
        )
    if "canaryTrafficPercent" not in stable:
        return None
    return _versioned(isvc, {"spec": {"predictor": {"canaryTrafficPercent": None}}})


def serverless_rollback_patch(isvc: dict[str, Any], *, model_uri: str, stable_uri: str) -> dict[str, Any] | None:
    """Pin all traffic to the previous revision (``canaryTrafficPercent: 0``) and restore the stable model.

    Restoring the model keeps the next canary from starting over the rejected one's configuration; the rollout
    annotation then marks the pinned predictor as idle.

    Args:
        isvc: The InferenceService as last read.
        model_uri: The canary's model.
        stable_uri: The stable model, used when the rollout annotation does not record it.

    Returns:
        The patch, or None when the canary is not served (rolled back already, or never started).

    Raises:
        Conflict: The canary was promoted already.
    """
    stable = predictor(isvc)
    if storage_uri(stable) != model_uri:
        return None
    if "canaryTrafficPercent" not in stable:
        raise Conflict(f"the canary {model_uri} was promoted on {where(isvc)} already; roll forward instead")
    record = rollout_record(isvc)
    record = {**record, "state": "rolled-back", "stableStorageUri": record.get("stableStorageUri") or stable_uri}
    annotations = {ROLLOUT_ANNOTATION: json.dumps(record, sort_keys=True)}
    spec = {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": record["stableStorageUri"]}}}
    return _versioned(isvc, {"metadata": {"annotations": annotations}, "spec": spec})


@functools.cache
def isvc_schema() -> dict[str, Any]:
    """The InferenceService schema (draft 2020-12) shipped as package data; do not mutate the result."""
    text = resources.files("musicrl.rollout").joinpath("schemas/inferenceservice.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _partial(node: Any) -> Any:
    """A schema node for merge patches: no ``required``, every property nullable (null removes), refs to partials.

    Array ``items`` stay whole: a merge patch replaces an array with complete elements.
    """
    if isinstance(node, list):
        return [_partial(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "required":
            continue
        if key == "$ref":
            out[key] = f"{value}Patch"
        elif key == "properties":
            out[key] = {name: {"anyOf": [{"type": "null"}, _partial(sub)]} for name, sub in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = {"anyOf": [{"type": "null"}, _partial(value)]}
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = _partial(value)
        else:
            out[key] = value
    return out


@functools.cache
def patch_schema() -> dict[str, Any]:
    """The variant of :func:`isvc_schema` a merge patch must fit: each definition ``X`` gains a partial ``XPatch``."""
    full = isvc_schema()
    defs = dict(full["$defs"])
    defs.update({f"{name}Patch": _partial(sub) for name, sub in full["$defs"].items()})
    root = _partial({key: value for key, value in full.items() if key != "$defs"})
    root["$schema"] = full["$schema"]
    return {**root, "$defs": defs}


@functools.cache
def _validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(isvc_schema() if kind == "object" else patch_schema())


def _validate(kind: str, document: Any, what: str) -> None:
    error = best_match(_validator(kind).iter_errors(document))
    if error is not None:
        raise InvalidRequest(f"{what} does not fit the InferenceService schema at {error.json_path}: {error.message}")


def validate_isvc(isvc: Any) -> None:
    """Raise :class:`InvalidRequest` naming the first field of ``isvc`` that breaks the schema."""
    _validate("object", isvc, "the InferenceService")


def validate_patch(patch: Any) -> None:
    """Raise :class:`InvalidRequest` naming the first field of the merge patch ``patch`` that breaks the schema."""
    _validate("patch", patch, "the merge patch")


def check_patch(isvc: dict[str, Any], patch: dict[str, Any]) -> None:
    """Check ``patch`` itself and the object it makes of ``isvc`` (status aside) against the schema.

    Raises:
        InvalidRequest: Either does not fit; the message names the field.
    """
    validate_patch(patch)
    patched = apply_merge_patch({k: v for k, v in isvc.items() if k != "status"}, patch)
    _validate("object", patched, f"InferenceService {where(isvc)} after the patch")
