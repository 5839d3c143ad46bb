"""An RL stage on several workers: a Kubeflow Trainer ``TrainJob`` that runs ``musicrl train rl`` under torchrun.

With ``rl_workers > 1`` the pipeline's RL step does not train in its own pod: it submits a TrainJob
(``trainer.kubeflow.org/v1alpha1``) on a torch runtime, one node per worker, each node running the same
command as the single-pod step (:func:`rl_command`) under ``torchrun``, which reads its rendezvous settings
from the ``PET_*`` variables the runtime sets; the trainer then joins an NCCL process group on GPUs
(``musicrl.rl.distributed``). The step waits for the TrainJob and fails with its status if it fails.

The body is built with the Trainer's own API models (``kubeflow_trainer_api.models``), so a field this
version of the API does not have fails here, not at admission, and serialised by them to the camelCase the
API server expects.
"""

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubeflow_trainer_api import models

from musicrl.errors import InvalidRequest, MusicRLError
from musicrl.pipeline.params import QUANTITY, RetrainingParams, check_node_selector, check_tolerations


logger = logging.getLogger(__name__)

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
NODE = "node"  # the replicated job and container name of the Trainer's torch runtimes
PATCH_MANAGER = "musicrl.io/pipeline"  # owner of our runtime patch (the API keys patches by manager)
# Object-store and hub credentials a step's Secret may hold; optional, so a Secret without one is fine.
STORAGE_SECRET = "musicrl-storage"  # the chart's object-store Secret, the one the pipeline's own steps read
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "HF_TOKEN")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class TrainJobFailed(MusicRLError):
    """A TrainJob failed, or did not finish in time; the message carries its status."""


class CustomObjectsApi(Protocol):
    """The two calls of ``kubernetes.client.CustomObjectsApi`` this module makes."""

    def create_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]
    ) -> Any: ...

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> Any: ...


def rl_command(config_path: str) -> list[str]:
    """The command of an RL stage, for the single-pod step and for each TrainJob process alike.

    Args:
        config_path: The stage's config file, as the training container sees it.
    """
    return ["musicrl", "train", "rl", "--config", config_path]


@dataclass(frozen=True, slots=True)
class SecretEnv:
    """An environment variable whose value comes from a key of a Kubernetes Secret.

    Attributes:
        name: The variable.
        secret: The Secret.
        key: Its key.
        optional: Leave the variable unset, rather than failing the pod, when the key is missing.
    """

    name: str
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True, slots=True)
class TrainJobSpec:
    """What a TrainJob for one RL stage needs.

    Attributes:
        name: The TrainJob's name (an RFC 1035 label: the Trainer names Services after it).
        image: The platform image, which holds the ``musicrl`` command.
        config_path: The stage config as the training containers see it.
        num_nodes: Training nodes (the pipeline's ``rl_workers``).
        runtime: The ClusterTrainingRuntime to run on; ``torch-distributed`` ships with the Trainer.
        gpu_resource: Accelerator resource name.
        gpus_per_node: Accelerators per node; one torchrun process drives each (at least one process).
        cpu: CPU request per node (a Kubernetes quantity).
        memory: Memory request and limit per node (a Kubernetes quantity).
        secret_env: Variables set from Secrets (credentials for the artefact store).
        env: Plain variables.
        node_selector: Node labels of the pool the nodes must run on.
        tolerations: Tolerations of that pool's taints, as Kubernetes writes them.
        labels: Labels on the TrainJob.
        active_deadline_s: The Trainer fails the job after this many seconds (None: no deadline).
    """

    name: str
    image: str
    config_path: str
    num_nodes: int
    runtime: str = "torch-distributed"
    gpu_resource: str = "nvidia.com/gpu"
    gpus_per_node: int = 1
    cpu: str = "8"
    memory: str = "64Gi"
    secret_env: tuple[SecretEnv, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    active_deadline_s: int | None = None

    def __post_init__(self) -> None:
        if len(self.name) > 63 or not _DNS_LABEL.match(self.name):
            raise InvalidRequest(
                f"a TrainJob name is a lowercase RFC 1035 label of at most 63 characters; got {self.name!r}"
            )
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise InvalidRequest(f"num_nodes must be >= 1 and gpus_per_node >= 0; got {self.num_nodes}, "
                                 f"{self.gpus_per_node}")  # fmt: skip
        for name in ("cpu", "memory"):
            if not QUANTITY.match(getattr(self, name)):
                raise InvalidRequest(f"{name} must be a Kubernetes quantity such as 8, 500m or 64Gi")
        if not self.image or not self.config_path:
            raise InvalidRequest("a TrainJob needs an image and the stage's config path")
        if self.active_deadline_s is not None and self.active_deadline_s < 1:
            raise InvalidRequest("active_deadline_s must be a positive number of seconds, or None")
        check_node_selector(self.node_selector)
        check_tolerations(list(self.tolerations))


def trainjob_body(spec: TrainJobSpec) -> dict[str, Any]:
    """The TrainJob as the Kubernetes API takes it: a plain dict with camelCase keys.

    Args:
        spec: The stage's TrainJob.

    Returns:
        The body for ``create_namespaced_custom_object``.
    """
    job = models.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind="TrainJob",
        metadata=models.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=spec.name, labels={"app.kubernetes.io/part-of": "musicrl", **spec.labels}
        ),
        spec=models.TrainerV1alpha1TrainJobSpec(
            runtime_ref=models.TrainerV1alpha1RuntimeRef(
                name=spec.runtime, kind="ClusterTrainingRuntime", api_group=GROUP
            ),
            trainer=_trainer(spec),
            runtime_patches=_placement_patch(spec),
            active_deadline_seconds=spec.active_deadline_s,
        ),
    )
    return job.to_dict()


def _trainer(spec: TrainJobSpec) -> models.TrainerV1alpha1Trainer:
    quantity = models.IoK8sApimachineryPkgApiResourceQuantity
    requests = {"cpu": quantity(spec.cpu), "memory": quantity(spec.memory)}
    limits = {"memory": quantity(spec.memory)}
    if spec.gpus_per_node:
        # extended resources are set as limits (the request defaults to the limit and may not differ)
        limits[spec.gpu_resource] = quantity(str(spec.gpus_per_node))
    env = [models.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in spec.env.items()]
    env += [
        models.IoK8sApiCoreV1EnvVar(
            name=s.name,
            value_from=models.IoK8sApiCoreV1EnvVarSource(
                secret_key_ref=models.IoK8sApiCoreV1SecretKeySelector(name=s.secret, key=s.key, optional=s.optional)
            ),
        )
        for s in spec.secret_env
    ]
    return models.TrainerV1alpha1Trainer(
        image=spec.image,
        # torchrun reads nodes, node rank and rendezvous from the runtime's PET_* variables; --no-python runs
        # the musicrl console script itself, so each process runs exactly the single-pod step's command
        command=["torchrun", "--no-python"],
        args=rl_command(spec.config_path),
        num_nodes=spec.num_nodes,
        num_proc_per_node=max(1, spec.gpus_per_node),
        resources_per_node=models.IoK8sApiCoreV1ResourceRequirements(requests=requests, limits=limits),
        env=env or None,
    )


def _placement_patch(spec: TrainJobSpec) -> list[models.TrainerV1alpha1RuntimePatch] | None:
    """The runtime patch that puts the training pods on the GPU pool (None when there is nothing to place)."""
    if not spec.node_selector and not spec.tolerations:
        return None
    pod = models.TrainerV1alpha1PodSpecPatch(
        node_selector=dict(spec.node_selector) or None,
        tolerations=[models.IoK8sApiCoreV1Toleration.from_dict(dict(t)) for t in spec.tolerations] or None,
    )
    node_job = models.TrainerV1alpha1ReplicatedJobPatch(
        name=NODE,
        template=models.TrainerV1alpha1JobTemplatePatch(
            spec=models.TrainerV1alpha1JobSpecPatch(template=models.TrainerV1alpha1PodTemplatePatch(spec=pod))
        ),
    )
    template = models.TrainerV1alpha1JobSetTemplatePatch(
        spec=models.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[node_job])
    )
    return [
        models.TrainerV1alpha1RuntimePatch(
            manager=PATCH_MANAGER,
            training_runtime_spec=models.TrainerV1alpha1TrainingRuntimeSpecPatch(template=template),
        )
    ]


def submit_and_wait(
    body: Mapping[str, Any], namespace: str, api: CustomObjectsApi, *, poll_s: float = 15.0, timeout_s: float = 86400.0
) -> dict[str, Any]:
    """Create the TrainJob ``body`` in ``namespace`` and wait until its status says Complete or Failed.

    A TrainJob of the same name that exists already is waited on instead of created again: a retried
    pipeline step whose first pod was evicted mid-wait must not start a second run into the same folder.

    Args:
        body: From :func:`trainjob_body`.
        namespace: Where to create it.
        api: A ``kubernetes.client.CustomObjectsApi`` (or anything with its two calls).
        poll_s: Seconds between status reads.
        timeout_s: Seconds to wait in all; the TrainJob is left running after that.

    Returns:
        The TrainJob object as last read, status included.

    Raises:
        TrainJobFailed: The API refused it, its status turned Failed (the condition's reason and message
            are in the error), or it had not finished after ``timeout_s``.
    """
    from kubernetes.client.exceptions import ApiException

    name = str(body["metadata"]["name"])
    where = f"TrainJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(body))
        logger.info("submitted %s (%d nodes)", where, body["spec"]["trainer"]["numNodes"])
    except ApiException as e:
        if e.status != 409:
            raise TrainJobFailed(f"the Kubernetes API refused {where}: {e.status} {e.reason}: {e.body}") from e
        logger.warning("%s exists already (a retried step?): waiting on it instead of creating it", where)
    deadline = time.monotonic() + timeout_s
    while True:
        job = _read(api, namespace, name, where)
        if job is not None:
            done = _finished(job, where)
            if done:
                return job
        if time.monotonic() >= deadline:
            raise TrainJobFailed(f"{where} did not finish within {timeout_s:.0f} s; it is left running")
        time.sleep(poll_s)


def _read(api: CustomObjectsApi, namespace: str, name: str, where: str) -> dict[str, Any] | None:
    """The TrainJob, or None after a transient API error (logged; the next poll tries again)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return dict(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except ApiException as e:
        if e.status is not None and 400 <= e.status < 500 and e.status != 429:
            raise TrainJobFailed(f"cannot read {where}: {e.status} {e.reason}") from e
        logger.warning("reading %s failed (%s %s); polling on", where, e.status, e.reason)
    except HTTPError as e:
        logger.warning("reading %s failed (%s); polling on", where, e)
    return None


def _finished(job: Mapping[str, Any], where: str) -> bool:
    """True once Complete; raises once Failed; False while neither condition is true."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Failed":
            raise TrainJobFailed(
                f"{where} failed ({condition.get('reason') or 'no reason given'}): {condition.get('message') or ''}"
            )
        if condition.get("type") == "Complete":
            logger.info("%s completed: %s", where, condition.get("message") or condition.get("reason"))
            return True
    return False


def stage_trainjob(
    stage: str, config_path: str, out_url: str, params: RetrainingParams, *, secret_name: str = STORAGE_SECRET
) -> TrainJobSpec:
    """The TrainJob of RL stage ``stage`` under the pipeline's parameters.

    Its name is derived from the stage's output folder, so a retried step finds the job its first attempt
    submitted (see :func:`submit_and_wait`).

    Args:
        stage: ``R``, ``U`` or ``RU``.
        config_path: The stage config, at a path the training containers see too.
        out_url: The stage's output folder.
        params: The pipeline's parameters: image, workers, GPU placement.
        secret_name: The Secret whose credential keys (:data:`SECRET_KEYS`, each optional) reach the
            training containers; empty for none.
    """
    digest = hashlib.sha256(out_url.encode()).hexdigest()[:10]
    secret_env = tuple(SecretEnv(k, secret_name, k, optional=True) for k in SECRET_KEYS if secret_name)
    return TrainJobSpec(
        name=f"musicrl-rl-{stage.lower()}-{digest}",
        image=params.image,
        config_path=config_path,
        num_nodes=params.rl_workers,
        gpu_resource=params.gpu_type,
        gpus_per_node=params.gpu_count,
        cpu=params.gpu_cpu_request,
        memory=params.gpu_memory_request,
        secret_env=secret_env,
        node_selector=dict(params.gpu_node_selector),
        tolerations=tuple(params.gpu_tolerations),
        labels={"musicrl.io/stage": stage.lower()},
    )


def run_stage(
    stage: str,
    config_path: str,
    params: RetrainingParams,
    *,
    api: CustomObjectsApi | None = None,
    namespace: str | None = None,
    poll_s: float = 15.0,
    timeout_s: float = 86400.0,
) -> str:
    """Run RL stage ``stage`` as a TrainJob, wait for it, and return the checkpoint it hands on.

    Args:
        stage: ``R``, ``U`` or ``RU``.
        config_path: The stage config (``write_stage_config``'s file), at a path the training pods see.
        params: The pipeline's parameters.
        api: The custom-objects API (default: built from the pod's service account, else the kube config).
        namespace: Where to run (default: this pod's namespace).
        poll_s: Seconds between status reads.
        timeout_s: Seconds to wait for the TrainJob in all.

    Returns:
        ``<out_url>/checkpoints/<best>``, else the latest checkpoint, as the single-pod step returns.

    Raises:
        TrainJobFailed: The TrainJob failed or timed out.
        InvalidRequest: It finished without leaving a checkpoint.
    """
    from musicrl.rl import checkpoints
    from musicrl.rl.config import RLConfig

    out_url = RLConfig.from_file(config_path).out_url
    spec = stage_trainjob(stage, config_path, out_url, params)
    body = trainjob_body(spec)
    submit_and_wait(
        body, namespace or current_namespace(), api or kubernetes_api(), poll_s=poll_s, timeout_s=timeout_s
    )
    name = checkpoints.read_pointer(out_url, checkpoints.BEST) or checkpoints.read_pointer(out_url, checkpoints.LATEST)
    if name is None:
        raise InvalidRequest(f"TrainJob {spec.name} completed but left no checkpoint in {out_url}/checkpoints")
    return f"{out_url.rstrip('/')}/checkpoints/{name}"


def kubernetes_api() -> CustomObjectsApi:
    """A ``CustomObjectsApi`` from the pod's service account, else from the local kube config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()  # type: ignore[no-any-return]


def current_namespace(path: str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace") -> str:
    """This pod's namespace (from its service-account mount); ``default`` outside a pod."""
    try:
        with open(path) as f:
            return f.read().strip() or "default"
    except FileNotFoundError:
        return "default"
