"""Optionally record each policy version in a Kubeflow Model Registry too, through its ``model-registry`` client.

The platform's own registry (:mod:`musicrl.pipeline.registry`) is the record the platform reads; a Kubeflow
Model Registry, where a cluster runs one, is where people browse models. A version goes there as version
``v<n>`` of one registered model (``musicrl-policy`` by default), with the checkpoint URI as its artifact and
the rest of the version (parent, run, snapshot, gate metrics) as custom properties.
"""

import asyncio
import logging
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from musicrl.errors import InvalidRequest, UpstreamUnavailable
from musicrl.settings import config_from


if TYPE_CHECKING:
    from musicrl.pipeline.registry import PolicyVersion

logger = logging.getLogger(__name__)

T = TypeVar("T")
ENV_PREFIX = "MUSICRL_MODEL_REGISTRY_"  # MUSICRL_MODEL_REGISTRY_URL, _MODEL_NAME, _AUTHOR, _TOKEN, ...


@dataclass(frozen=True, slots=True)
class ModelRegistryConfig:
    """Where and as what to record policy versions in a Kubeflow Model Registry.

    Attributes:
        url: The Model Registry's REST address, e.g. ``http://model-registry-service.kubeflow:8080``
            (the port defaults to 8080 for http, 443 for https).
        model_name: The registered model whose versions the policy versions become.
        author: Recorded as each version's author.
        token: Bearer token; None reads the pod's service-account token, as the client does by default
            (required by the client for https).
        model_format_name: The artifact's model format, which KServe matches against serving runtimes.
        model_format_version: Its version.
    """

    url: str
    model_name: str = "musicrl-policy"
    author: str = "musicrl-pipeline"
    token: str | None = None
    model_format_name: str = "musicgen"  # the generator's ServingRuntime serves transformers MusicGen folders
    model_format_version: str = "1"

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidRequest(
                f"the Model Registry URL must be http(s)://host[:port], e.g. "
                f"http://model-registry-service.kubeflow:8080; got {self.url!r}"
            )
        if not self.model_name.strip():
            raise InvalidRequest("the Model Registry model name is empty; the default is musicrl-policy")


def model_registry_from_env(environ: Mapping[str, str] | None = None) -> ModelRegistryConfig | None:
    """The Model Registry configured by ``MUSICRL_MODEL_REGISTRY_*`` variables, or None without ``..._URL``.

    Args:
        environ: The environment (default ``os.environ``).

    Raises:
        InvalidRequest: A variable is set to a malformed value.
    """
    environ = os.environ if environ is None else environ
    if not environ.get(f"{ENV_PREFIX}URL"):
        return None
    return config_from(ModelRegistryConfig, environ=environ, env_prefix=ENV_PREFIX)


def version_properties(version: "PolicyVersion", registry_url: str) -> dict[str, str | float]:
    """The custom properties a policy version carries in the Model Registry (no empty values).

    Args:
        version: The policy version.
        registry_url: The platform registry that holds it (so a reader can find the full record).
    """
    properties: dict[str, str | float] = {"musicrl_registry_url": registry_url}
    for name in ("parent_uri", "training_run", "snapshot_hash", "gate_report_uri"):
        value = getattr(version, name)
        if value:
            properties[name] = value
    properties["created_at"] = version.created_at.isoformat()
    properties.update({f"metric/{name}": float(value) for name, value in version.metrics.items()})
    return properties


def record_version(config: ModelRegistryConfig, version: "PolicyVersion", registry_url: str) -> None:
    """Register ``version`` as version ``v<n>`` of ``config.model_name`` in the Model Registry.

    Args:
        config: Which Model Registry, and under which model name.
        version: The policy version, already written to the platform registry.
        registry_url: The platform registry's URL (recorded as a property).

    Raises:
        InvalidRequest: A Model Registry is configured but the ``model-registry`` package is not installed.
        UpstreamUnavailable: The Model Registry could not be reached or refused the version; the version
            stays registered in the platform registry.
    """
    try:
        from model_registry import ModelRegistry
        from model_registry.exceptions import StoreError
        from mr_openapi.exceptions import OpenApiException
    except ImportError as e:
        raise InvalidRequest(
            f"a Kubeflow Model Registry is configured ({config.url}) but the model-registry package is not "
            "installed: pip install model-registry==0.3.18, or unset the Model Registry URL"
        ) from e
    import aiohttp  # the client's transport; installed with it

    try:
        client = ModelRegistry(config.url, author=config.author, user_token=config.token, async_runner=_run_coroutine)
        client.register_model(
            config.model_name,
            version.model_uri,
            version=version.version,
            model_format_name=config.model_format_name,
            model_format_version=config.model_format_version,
            version_description=f"MusicRL policy {version.version}, finetuned from {version.parent_uri or '?'}",
            metadata=version_properties(version, registry_url),
        )
    except (StoreError, OpenApiException, aiohttp.ClientError, OSError, ValueError) as e:
        raise UpstreamUnavailable(
            f"{version.version} is registered in {registry_url}, but recording it in the Kubeflow Model "
            f"Registry at {config.url} failed: {e}"
        ) from e
    logger.info("recorded %s as version %s of %s in %s", version.model_uri, version.version, config.model_name,
                config.url)  # fmt: skip


def _run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    # The client's default runner patches asyncio process-wide (nest_asyncio); the registry is called from
    # plain synchronous code, so a fresh event loop per call does the same job without touching asyncio.
    return asyncio.run(coro)
