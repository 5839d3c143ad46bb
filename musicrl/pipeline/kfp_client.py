"""Compile, upload, run and schedule the retraining pipeline through ``kfp.Client``.

``schedule`` is idempotent by name: Kubeflow cannot update a recurring run, so scheduling creates the new
recurring run, then deletes every other one of the same name, found by a ``display_name`` filter over all
pages. Creating first means a refused schedule (a bad cron, a missing permission) leaves the old one running.

Errors from the API come back as the platform's: an unreachable host is :class:`UpstreamUnavailable` (exit
10) with a sentence naming the host, a refused token :class:`Unauthorized` (7), a bad request
:class:`InvalidRequest` (2), and so on, never a traceback.
"""

import ast
import contextlib
import datetime
import hashlib
import importlib
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kfp
import kfp_server_api
import urllib3.exceptions
from kfp import compiler

from musicrl.errors import Forbidden, InvalidRequest, MusicRLError, NotFound, Unauthorized, UpstreamUnavailable
from musicrl.pipeline.kfp_config import KfpConfig, RunConfig, ScheduleConfig, UploadConfig


logger = logging.getLogger(__name__)

_PAGE_SIZE = 100  # recurring runs per page while looking for same-named ones


@dataclass(frozen=True, slots=True)
class UploadedVersion:
    """A pipeline version in Kubeflow.

    Attributes:
        pipeline_id: The pipeline.
        version_id: The version.
        version_name: Its name.
        created: False when a version of that name was there already.
    """

    pipeline_id: str
    version_id: str
    version_name: str
    created: bool


@dataclass(frozen=True, slots=True)
class Scheduled:
    """The outcome of ``schedule``.

    Attributes:
        recurring_run_id: The new recurring run.
        replaced: Ids of the same-named recurring runs it replaced (deleted).
        version: The pipeline version it runs.
    """

    recurring_run_id: str
    replaced: tuple[str, ...]
    version: UploadedVersion


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Turn what ``kfp.Client`` raises into the platform's errors; keep kfp's printed links off stdout.

    Args:
        host: The API's URL, for the sentences.
    """
    try:
        # kfp prints "Experiment details: <link>" with print(); our stdout carries the command's output only
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")  # "only works with KFP v2"
            yield
    except urllib3.exceptions.HTTPError as e:
        reason = getattr(e, "reason", None) or e
        raise UpstreamUnavailable(
            f"cannot reach Kubeflow Pipelines at {host} ({reason}); check KFP_HOST (or --host) and that the "
            "API is reachable from here (kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80)"
        ) from e
    except kfp_server_api.ApiException as e:
        raise _api_error(host, e) from e
    except TimeoutError as e:  # get_kfp_healthz gives up after five failed attempts
        raise UpstreamUnavailable(f"Kubeflow Pipelines at {host} is not healthy: {e}") from e


def _api_error(host: str, e: kfp_server_api.ApiException) -> MusicRLError:
    detail = _message(e.body) or e.reason or ""
    said = f"Kubeflow Pipelines at {host} answered {e.status}: {detail}"
    if e.status == 0 or e.status is None:
        return UpstreamUnavailable(f"cannot reach Kubeflow Pipelines at {host}: {detail}")
    if e.status == 401:
        return Unauthorized(f"{said}; give a token with KFP_TOKEN (or --token)")
    if e.status == 403:
        return Forbidden(f"{said}; the token lacks access to this namespace (KFP_NAMESPACE)")
    if e.status == 404:
        return NotFound(said)
    if 400 <= e.status < 500:
        return InvalidRequest(said)
    return UpstreamUnavailable(said)


def _message(body: object) -> str:
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str):
        return ""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:500]
    return str(data.get("message") or data.get("error") or body)[:500] if isinstance(data, dict) else body[:500]


def connect(config: KfpConfig) -> kfp.Client:
    """A client for the API at ``config.host``, checked with one health request.

    Args:
        config: Host, namespace and token.

    Raises:
        UpstreamUnavailable: The host cannot be reached or is not healthy.
        Unauthorized: The API refused the token.
    """
    with kfp_errors(config.host):
        _probe(config)
        return kfp.Client(host=config.host, namespace=config.namespace, existing_token=config.token)


def _probe(config: KfpConfig) -> None:
    # kfp.Client's own health check retries every error five times, 5 s apart, and then reports the host as
    # unhealthy; one request here says at once whether the host answers and whether it takes the token.
    configuration = kfp_server_api.Configuration(host=config.host)
    if config.token:
        configuration.api_key["authorization"] = config.token
        configuration.api_key_prefix["authorization"] = "Bearer"
    with kfp_server_api.ApiClient(configuration) as api_client:
        kfp_server_api.HealthzServiceApi(api_client).healthz_service_get_healthz()


def load_pipeline(reference: str) -> Callable[..., Any]:
    """The ``@dsl.pipeline`` function named ``module:function``, imported now.

    Args:
        reference: ``module:function``, e.g. ``pipelines.retraining:retraining_pipeline``.

    Raises:
        InvalidRequest: The module or the function does not exist.
    """
    module_name, _, name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as e:
        raise InvalidRequest(f"cannot load the pipeline {reference!r}: {e}") from e


def compile_pipeline(pipeline: str | Callable[..., Any], package_path: str) -> str:
    """Compile ``pipeline`` (a function, or ``module:function``) to the YAML package ``package_path``, byte for
    byte the same in every process (an upload names its version after the package's hash).

    Args:
        pipeline: The ``@dsl.pipeline`` function, or where to import it from.
        package_path: The YAML file to write (its folder is created).

    Returns:
        ``package_path``.

    Raises:
        InvalidRequest: ``pipeline`` cannot be imported.
    """
    function = load_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    Path(package_path).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=function, package_path=package_path)
    path = Path(package_path)
    path.write_text(_sorted_header_defaults(path.read_text()))
    logger.info("compiled %s to %s", getattr(function, "name", function), package_path)
    return package_path


DEFAULT_IN_HEADER = re.compile(r"^(?P<head>#    \w+: \w+ )\[Default: (?P<value>.*)\]$")


def _sorted_header_defaults(text: str) -> str:
    """Sort the keys of dict defaults in kfp's comment header, whose order kfp takes from a protobuf Struct
    and which therefore changes between processes; the spec itself is already in a stable order."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        match = DEFAULT_IN_HEADER.match(line)
        if match and match["value"][:1] in "[{":
            value = json.dumps(ast.literal_eval(match["value"]), sort_keys=True)
            lines[i] = f"{match['head']}[Default: {value}]"
    return "\n".join(lines)


def _display_name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _package_version_name(package_path: str, pipeline_name: str) -> str:
    try:
        digest = hashlib.sha256(Path(package_path).read_bytes()).hexdigest()[:12]
    except OSError as e:
        raise InvalidRequest(
            f"cannot read the pipeline package {package_path}: {e}; run musicrl pipeline compile"
        ) from e
    return f"{pipeline_name}-{digest}"


def upload_pipeline(client: kfp.Client, config: UploadConfig, *, host: str = "") -> UploadedVersion:
    """Add the package as a version of ``config.pipeline_name`` (creating the pipeline the first time).

    A version of the same name already there is returned as it is, so re-uploading a package adds nothing.

    Args:
        client: A connected client (:func:`connect`).
        config: The package, the pipeline and the version's name.
        host: The API's URL, for error sentences.

    Raises:
        InvalidRequest: The package cannot be read, or the API refused it.
        UpstreamUnavailable: The API cannot be reached.
    """
    name = config.pipeline_version or _package_version_name(config.package, config.pipeline_name)
    with kfp_errors(host):
        pipeline_id = client.get_pipeline_id(config.pipeline_name)
        if pipeline_id is None:
            pipeline = client.upload_pipeline(config.package, pipeline_name=config.pipeline_name)
            # Kubeflow makes the first version itself, from the same package, named after the pipeline
            (first,) = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1).pipeline_versions
            return UploadedVersion(pipeline.pipeline_id, first.pipeline_version_id, first.display_name, True)
        found = client.list_pipeline_versions(pipeline_id, filter=_display_name_filter(name)).pipeline_versions
        if found:
            logger.info("pipeline %s already has version %s", config.pipeline_name, name)
            return UploadedVersion(pipeline_id, found[0].pipeline_version_id, name, False)
        version = client.upload_pipeline_version(config.package, name, pipeline_id=pipeline_id)
    return UploadedVersion(pipeline_id, version.pipeline_version_id, name, True)


def run_pipeline(
    client: kfp.Client, config: RunConfig, params: Mapping[str, Any], *, namespace: str, host: str = ""
) -> str:
    """Start one run of the package in ``config.experiment`` (created when missing).

    Args:
        client: A connected client (:func:`connect`).
        config: The package, the experiment and the run's name.
        params: The pipeline's parameters (missing ones take the pipeline's defaults).
        namespace: The profile namespace of the experiment.
        host: The API's URL, for error sentences.

    Returns:
        The run's id.
    """
    run_name = config.run_name or f"musicrl-retraining-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
    with kfp_errors(host):
        experiment = client.create_experiment(config.experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment.experiment_id, run_name, pipeline_package_path=config.package, params=dict(params)
        )
    logger.info("started run %s (%s) in experiment %s", run_name, run.run_id, config.experiment)
    return str(run.run_id)


def find_recurring_runs(client: kfp.Client, name: str, *, namespace: str, host: str = "") -> list[Any]:
    """Every recurring run named ``name`` in ``namespace``, over all pages.

    Args:
        client: A connected client (:func:`connect`).
        name: The recurring runs' display name.
        namespace: The profile namespace.
        host: The API's URL, for error sentences.
    """
    found: list[Any] = []
    token = ""
    with kfp_errors(host):
        while True:
            page = client.list_recurring_runs(
                page_token=token, page_size=_PAGE_SIZE, namespace=namespace, filter=_display_name_filter(name)
            )
            # the filter is the server's to apply; the name check keeps a server that ignores it harmless
            found += [r for r in page.recurring_runs or [] if r.display_name == name]
            token = page.next_page_token or ""
            if not token:
                return found


def schedule_pipeline(
    client: kfp.Client, config: ScheduleConfig, params: Mapping[str, Any], *, namespace: str, host: str = ""
) -> Scheduled:
    """Upload the package and make ``config.schedule_name`` the one recurring run of it, on ``config.cron``.

    Runs never overlap (``max_concurrency=1``) and missed intervals are not caught up (``no_catchup``):
    a retraining that starts late should train once on everything, not once per missed night.

    Args:
        client: A connected client (:func:`connect`).
        config: The cron, the schedule's name, the experiment and the package.
        params: The pipeline's parameters for every run it starts.
        namespace: The profile namespace.
        host: The API's URL, for error sentences.

    Returns:
        The new recurring run and the ones it replaced.
    """
    version = upload_pipeline(
        client, UploadConfig(config.package, config.pipeline_name, config.pipeline_version), host=host
    )
    old = find_recurring_runs(client, config.schedule_name, namespace=namespace, host=host)
    with kfp_errors(host):
        experiment = client.create_experiment(config.experiment, namespace=namespace)
        new = client.create_recurring_run(
            experiment.experiment_id,
            config.schedule_name,
            cron_expression=config.cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(params),
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
            enabled=True,
        )
        replaced = tuple(r.recurring_run_id for r in old if r.recurring_run_id != new.recurring_run_id)
        for recurring_run_id in replaced:
            client.delete_recurring_run(recurring_run_id)
    logger.info("scheduled %s (%s) at %r; replaced %s", config.schedule_name, new.recurring_run_id, config.cron,
                list(replaced) or "none")  # fmt: skip
    return Scheduled(str(new.recurring_run_id), replaced, version)


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` flags as pipeline parameters: a value that parses as JSON is taken as JSON, else as text.

    ``rl_workers=4`` is the number 4, ``gpu_node_selector={"pool": "gpu"}`` a mapping, ``stages=R,U`` text.

    Raises:
        InvalidRequest: A pair without ``=`` or with an empty key.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--param takes KEY=VALUE, e.g. --param rl_workers=4; got {pair!r}")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params
