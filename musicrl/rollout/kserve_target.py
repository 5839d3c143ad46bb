"""The ``kserve`` rollout target: runs the canary by merge-patching the generator's KServe InferenceService.

The patch bodies, and what each mode means by start, promote and roll back, live in
:mod:`musicrl.rollout.isvc_patches`; this module reads the object, sends the patches through the official
``kubernetes`` client (off the event loop: the client blocks) and turns API errors into the platform's.

The endpoints it returns are in-cluster Service addresses, because the gateway calls the stable and the canary
policy explicitly, each by its own address:

- Standard: ``{isvc}-predictor`` (or ``{isvc}-{name}-predictor`` once a named predictor was promoted) and the
  canary's ``{isvc}-{name}-predictor``.
- Serverless: ``{isvc}-predictor`` and Knative's tag route ``latest-{isvc}-predictor`` for the canary (``prev-…``
  for the revision before it).
"""

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from musicrl.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    ModelNotReady,
    MusicRLError,
    NotFound,
    Unauthorized,
    UpstreamUnavailable,
)
from musicrl.rollout import isvc_patches as patches
from musicrl.rollout.routing import PolicyEndpoint
from musicrl.rollout.target import CanarySpec


logger = logging.getLogger(__name__)

Mode = Literal["standard", "serverless"]
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# KServe's deploymentMode annotation values (legacy names included) and the mode each one is
_MODES: dict[str, Mode] = {
    "Standard": "standard",
    "RawDeployment": "standard",
    "Knative": "serverless",
    "Serverless": "serverless",
}


@dataclass(frozen=True, slots=True)
class KServeTargetConfig:
    """Which InferenceService serves the policy, and how to reach and patch it.

    Attributes:
        namespace: The InferenceService's namespace.
        isvc_name: Its name.
        model_name: The V2 model name the gateway calls on every endpoint.
        mode: ``standard`` (RawDeployment: ``spec.canary``) or ``serverless`` (Knative: ``canaryTrafficPercent``).
        cluster_domain: DNS suffix of in-cluster Service names.
        port: Port of the predictor Services.
        canary_replicas: Pods of a Standard-mode canary.
        request_timeout_s: Limit on each call to the Kubernetes API, in seconds.
        ready_timeout_s: How long :meth:`KServeTarget.wait_ready` waits for a canary, in seconds.
        ready_poll_s: Seconds between status reads in :meth:`KServeTarget.wait_ready`.
        field_manager: The name our patches carry in the object's managedFields.
    """

    namespace: str
    isvc_name: str
    model_name: str
    mode: Mode = "standard"
    cluster_domain: str = "svc.cluster.local"
    port: int = 80  # KServe's predictor Services (and Knative's) listen on 80 and forward to the server's 8080
    # KServe sizes a canary by its traffic share unless told: a 0 % canary, which the gateway still calls, gets no pod
    canary_replicas: int = 1
    request_timeout_s: float = 10.0  # an API call, not a rollout step: fail fast and let the controller retry
    ready_timeout_s: float = 1800.0  # pulling and loading a checkpoint on a fresh GPU node takes minutes
    ready_poll_s: float = 5.0  # status changes at pod speed; faster polling only loads the API server
    # the chart's musicrl.rolloutFieldManager: `helm upgrade` keeps a storageUri that this manager wrote last
    field_manager: str = "musicrl-rollout"

    def __post_init__(self) -> None:
        for field in ("namespace", "isvc_name"):
            value = getattr(self, field)
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise InvalidRequest(
                    f"KServeTargetConfig.{field} must be a DNS label (lowercase letters, digits and '-', starting "
                    f"with a letter, at most 63 characters), got {value!r}: use the InferenceService's own"
                )
        if not self.model_name.strip():
            raise InvalidRequest("KServeTargetConfig.model_name is empty: set the V2 model name the generator serves")
        if self.mode not in ("standard", "serverless"):
            raise InvalidRequest(
                f"KServeTargetConfig.mode must be 'standard' or 'serverless', got {self.mode!r}: use the "
                "InferenceService's serving.kserve.io/deploymentMode (Standard/RawDeployment or Knative/Serverless)"
            )
        if not self.cluster_domain or "/" in self.cluster_domain or ":" in self.cluster_domain:
            raise InvalidRequest(
                f"KServeTargetConfig.cluster_domain must be a bare DNS suffix such as svc.cluster.local, got "
                f"{self.cluster_domain!r}: drop any scheme, port or path"
            )
        if not 1 <= self.port <= 65535:
            raise InvalidRequest(f"KServeTargetConfig.port must be between 1 and 65535, got {self.port}")
        if self.canary_replicas < 1:
            raise InvalidRequest(
                f"KServeTargetConfig.canary_replicas must be at least 1, got {self.canary_replicas}: the gateway "
                "calls the canary directly, so it needs a pod even at 0 % traffic"
            )
        for field in ("request_timeout_s", "ready_timeout_s", "ready_poll_s"):
            if not getattr(self, field) > 0:
                raise InvalidRequest(f"KServeTargetConfig.{field} must be positive, got {getattr(self, field)}")

    def address(self, service: str) -> str:
        """``host:port`` of the in-cluster Service ``service``."""
        return f"{service}.{self.namespace}.{self.cluster_domain}:{self.port}"


def default_configuration() -> client.Configuration:
    """Credentials of the pod's service account, else of the local kube config.

    Raises:
        InvalidRequest: Neither is there.
    """
    configuration = client.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        try:
            # KUBECONFIG as it is now: the client itself reads the variable once, when it is first imported
            path = os.environ.get("KUBECONFIG", "~/.kube/config")
            kube_config.load_kube_config(config_file=path, client_configuration=configuration)
        except (kube_config.ConfigException, OSError) as e:
            raise InvalidRequest(
                f"no Kubernetes credentials ({e}): run in a pod with a service account or point KUBECONFIG at a config"
            ) from e
    return configuration


class KServeTarget:
    """A :class:`musicrl.rollout.target.RolloutTarget` over one KServe InferenceService.

    Every method reads the object first and patches only when it is not already in the wanted state, so a
    restarted controller may repeat any call. A patch computed from a stale read is refused by the API server
    (it carries the read's resourceVersion) and raises :class:`Conflict`; repeating the call reads afresh.

    Args:
        config: Which InferenceService, and how to reach it.
        configuration: The Kubernetes client configuration (default: :func:`default_configuration`).
    """

    def __init__(self, config: KServeTargetConfig, configuration: client.Configuration | None = None) -> None:
        self.config = config
        self.api = client.CustomObjectsApi(client.ApiClient(configuration or default_configuration()))

    def close(self) -> None:
        """Close the client's connection pool."""
        self.api.api_client.close()

    @property
    def where(self) -> str:
        return f"{self.config.namespace}/{self.config.isvc_name}"

    async def check_idle(self) -> None:
        """Raise :class:`Conflict` when the InferenceService already runs a canary (KServe issue 2130)."""
        patches.ensure_idle(await self._read())

    async def start_canary(self, canary: CanarySpec, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Serve ``canary`` next to the stable predictor; returns the canary's endpoint.

        Raises:
            Conflict: Another canary is in flight, or the object changed while we patched it.
            InvalidRequest: The InferenceService cannot take this canary (mode, model form, replicas).
        """
        isvc = await self._read()
        self._check_mode(isvc)
        served = patches.storage_uri((isvc.get("spec") or {}).get("predictor") or {})
        if served not in (stable.model_uri, canary.model_uri):
            logger.warning(
                "%s serves %s, not the stable %s the controller knows", self.where, served, stable.model_uri
            )
        name = self.config.isvc_name
        if self.config.mode == "standard":
            canary_name = patches.canary_name(canary.rollout_id, name)
            patch = patches.standard_start_patch(
                isvc,
                name=canary_name,
                model_uri=canary.model_uri,
                traffic_percent=canary.traffic_percent,
                replicas=self.config.canary_replicas,
            )
            service = f"{name}-{canary_name}-predictor"
        else:
            patch = patches.serverless_start_patch(
                isvc, model_uri=canary.model_uri, traffic_percent=canary.traffic_percent
            )
            service = f"latest-{name}-predictor"  # Knative's tag route to the newest revision
        await self._patch(isvc, patch, f"start the canary {canary.model_uri}")
        return PolicyEndpoint(self.config.address(service), self.config.model_name, canary.model_uri, canary.version)

    def stable_during_canary(self, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Standard mode: the stable predictor's own Service. Serverless: ``prev-{isvc}-predictor``, since the
        main route sends the canary's traffic share to the newest revision."""
        if self.config.mode == "standard":
            return stable
        service = f"prev-{self.config.isvc_name}-predictor"
        return PolicyEndpoint(self.config.address(service), stable.model_name, stable.model_uri, stable.version)

    async def canary_ready(self, canary: PolicyEndpoint) -> bool:
        """Whether the canary's pods are ready, as the InferenceService's status reports them."""
        isvc = await self._read()
        if self.config.mode == "standard":
            return standard_canary_ready(isvc, canary.model_uri)
        return serverless_canary_ready(isvc, canary.model_uri)

    async def wait_ready(self, canary: PolicyEndpoint) -> None:
        """Poll :meth:`canary_ready` every ``ready_poll_s`` until it holds.

        Raises:
            ModelNotReady: It did not within ``ready_timeout_s``.
        """
        deadline = time.monotonic() + self.config.ready_timeout_s
        while not await self.canary_ready(canary):
            if time.monotonic() >= deadline:
                raise ModelNotReady(
                    f"the canary {canary.model_uri} on {self.where} was not ready within "
                    f"{self.config.ready_timeout_s:.0f} s: see the InferenceService's status and its pods' events"
                )
            await asyncio.sleep(self.config.ready_poll_s)

    async def promote(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> PolicyEndpoint:
        """Make the canary the stable predictor; returns the endpoint that serves it from now on.

        Raises:
            NotFound: The InferenceService does not run this canary (and does not serve it as stable either).
            Conflict: The object changed while we patched it.
        """
        isvc = await self._read()
        name = self.config.isvc_name
        if self.config.mode == "standard":
            patch, predictor_name = patches.standard_promote_patch(isvc, model_uri=canary.model_uri)
            service = f"{name}-{predictor_name}-predictor" if predictor_name else f"{name}-predictor"
        else:
            patch = patches.serverless_promote_patch(isvc, model_uri=canary.model_uri)
            service = f"{name}-predictor"  # all traffic now goes to the newest revision
        await self._patch(isvc, patch, f"promote the canary {canary.model_uri}")
        return PolicyEndpoint(self.config.address(service), self.config.model_name, canary.model_uri, canary.version)

    async def rollback(self, canary: PolicyEndpoint, stable: PolicyEndpoint) -> None:
        """Stop serving the canary; the stable predictor serves everything.

        Raises:
            Conflict: The canary was promoted already, or the object changed while we patched it.
        """
        isvc = await self._read()
        if self.config.mode == "standard":
            patch = patches.standard_rollback_patch(isvc, model_uri=canary.model_uri)
        else:
            patch = patches.serverless_rollback_patch(isvc, model_uri=canary.model_uri, stable_uri=stable.model_uri)
        await self._patch(isvc, patch, f"roll back the canary {canary.model_uri}")

    def _check_mode(self, isvc: dict[str, Any]) -> None:
        declared = ((isvc.get("metadata") or {}).get("annotations") or {}).get(patches.DEPLOYMENT_MODE)
        if declared is not None and _MODES.get(declared) != self.config.mode:
            raise InvalidRequest(
                f"InferenceService {self.where} runs in {declared} mode but the kserve target is configured with "
                f"mode={self.config.mode!r}: set mode to match it (Standard/RawDeployment is 'standard', "
                "Knative/Serverless is 'serverless'; ModelMesh has no canaries)"
            )

    async def _read(self) -> dict[str, Any]:
        try:
            isvc = await asyncio.to_thread(
                self.api.get_namespaced_custom_object,
                patches.GROUP,
                patches.VERSION,
                self.config.namespace,
                patches.PLURAL,
                self.config.isvc_name,
                _request_timeout=self.config.request_timeout_s,
            )
        except ApiException as e:
            raise self._api_error(e, "read") from e
        except HTTPError as e:
            raise self._unreachable(e, "read") from e
        return dict(isvc)

    async def _patch(self, isvc: dict[str, Any], patch: dict[str, Any] | None, action: str) -> None:
        if patch is None:
            logger.info("%s: nothing to do to %s (already done)", action, self.where)
            return
        patches.check_patch(isvc, patch)  # kserve's own models would let a bad value through to the webhook
        try:
            await asyncio.to_thread(
                self.api.patch_namespaced_custom_object,
                patches.GROUP,
                patches.VERSION,
                self.config.namespace,
                patches.PLURAL,
                self.config.isvc_name,
                patch,
                field_manager=self.config.field_manager,
                _request_timeout=self.config.request_timeout_s,
            )
        except ApiException as e:
            raise self._api_error(e, action) from e
        except HTTPError as e:
            raise self._unreachable(e, action) from e
        logger.info("%s on %s: sent %s", action, self.where, json.dumps(patch, sort_keys=True))

    def _unreachable(self, error: HTTPError, action: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"could not reach the Kubernetes API server to {action} InferenceService {self.where} ({error}); "
            "retry once it answers"
        )

    def _api_error(self, error: ApiException, action: str) -> MusicRLError:
        """The platform error for an API server answer ``error`` to ``action``."""
        status, detail = error.status or 0, _status_message(error)
        what = f"InferenceService {self.where}"
        if status == 404:
            return NotFound(
                f"{what} does not exist (404 to {action}): check namespace and isvc_name in the kserve target config"
            )
        if status == 409:
            return Conflict(
                f"{what} changed while the rollout controller tried to {action} ({detail}); the other change was "
                "kept: repeat the step, which reads the object afresh"
            )
        if status == 401:
            return Unauthorized(f"the Kubernetes API server did not accept our credentials to {action} {what}")
        if status == 403:
            return Forbidden(
                f"the rollout controller may not {action} {what} ({detail}): grant its service account get and "
                "patch on inferenceservices.serving.kserve.io in that namespace"
            )
        if status == 429 or status >= 500 or status == 0:
            return UpstreamUnavailable(
                f"the Kubernetes API server could not {action} {what} (HTTP {status}: {detail}); retry later"
            )
        return InvalidRequest(f"the Kubernetes API server refused to {action} {what} (HTTP {status}: {detail})")


def _status_message(error: ApiException) -> str:
    """The ``message`` of the Kubernetes Status object in an error's body, else its reason."""
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return str(error.reason or "no detail")
    return str(body.get("message") or error.reason) if isinstance(body, dict) else str(error.reason)


def _condition(isvc: dict[str, Any], kind: str) -> bool:
    conditions = (isvc.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def standard_canary_ready(isvc: dict[str, Any], model_uri: str) -> bool:
    """Standard mode: the canary entry serving ``model_uri`` is in ``status.canaryStatuses`` as ready.

    KServe marks a canary ready when its Deployment has an available replica and sets the condition
    ``CanaryPredictorReady`` once all canaries are; both are required.
    """
    canaries = (isvc.get("spec") or {}).get("canary") or []
    ours = next((c for c in canaries if patches.storage_uri(c.get("predictor") or {}) == model_uri), None)
    if ours is None:
        return False
    name = (ours.get("predictor") or {}).get("name")
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or []
    ready = any(s.get("name") == name and s.get("ready") is True for s in statuses)
    return ready and _condition(isvc, "CanaryPredictorReady")


def serverless_canary_ready(isvc: dict[str, Any], model_uri: str) -> bool:
    """Serverless mode: the predictor's newest revision is ready, is not the one from before the canary, and
    holds the ``latest`` tag route the gateway calls.

    Comparing with the revision recorded at start matters: until KServe has reconciled the patch, the latest
    created and latest ready revisions are both the stable one's, which would read as "ready".
    """
    stable = (isvc.get("spec") or {}).get("predictor") or {}
    if patches.storage_uri(stable) != model_uri or "canaryTrafficPercent" not in stable:
        return False
    component = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    created, ready = component.get("latestCreatedRevision"), component.get("latestReadyRevision")
    if not created or created != ready or ready == patches.rollout_record(isvc).get("baseRevision"):
        return False
    traffic = component.get("traffic") or []
    return any(t.get("tag") == "latest" and t.get("revisionName") == ready for t in traffic)
