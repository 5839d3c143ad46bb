"""Settings of ``musicrl pipeline compile|upload|run|schedule``, apart from the client so the CLI builds fast.

The connection comes from ``KFP_HOST``, ``KFP_NAMESPACE`` and ``KFP_TOKEN`` (or ``--host``, ``--namespace``,
``--token``); what to upload, run or schedule from flags (or ``MUSICRL_PIPELINE_*`` variables).
"""

from dataclasses import dataclass, field
from urllib.parse import urlparse

from musicrl.errors import InvalidRequest


KFP_ENV_PREFIX = "KFP_"  # the names the Kubeflow docs and kfp's own examples use
PIPELINE_ENV_PREFIX = "MUSICRL_PIPELINE_"
DEFAULT_PACKAGE = "pipelines/retraining.yaml"
DEFAULT_PIPELINE = "pipelines.retraining:retraining_pipeline"
DEFAULT_NAME = "musicrl-retraining"


@dataclass(frozen=True, slots=True)
class KfpConfig:
    """Where the Kubeflow Pipelines API is and who the caller is.

    Attributes:
        host: The API's base URL, e.g. ``http://ml-pipeline-ui.kubeflow:80`` or a port-forward.
        namespace: The Kubeflow profile namespace (multi-user deployments); ``kubeflow`` for single-user.
        token: A bearer token for the API (a service-account or OIDC token); None for none.
    """

    host: str = field(metadata={"help": "Kubeflow Pipelines API URL (env KFP_HOST)"})
    namespace: str = field(default="kubeflow", metadata={"help": "profile namespace (env KFP_NAMESPACE)"})
    token: str | None = field(default=None, metadata={"help": "bearer token (env KFP_TOKEN; prefer the variable)"})

    def __post_init__(self) -> None:
        parsed = urlparse(self.host)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidRequest(
                f"the Kubeflow Pipelines host must be an http(s) URL such as http://localhost:8080; got {self.host!r}"
            )
        if not self.namespace.strip():
            raise InvalidRequest("the Kubeflow namespace is empty; single-user deployments use 'kubeflow'")


@dataclass(frozen=True, slots=True)
class CompileConfig:
    """What to compile, and where to.

    Attributes:
        pipeline: ``module:function`` of the ``@dsl.pipeline`` function.
        output: The package file to write (YAML).
    """

    pipeline: str = field(default=DEFAULT_PIPELINE, metadata={"help": "MODULE:FUNCTION of the pipeline"})
    output: str = field(default=DEFAULT_PACKAGE, metadata={"help": "the YAML package to write"})

    def __post_init__(self) -> None:
        module, _, name = self.pipeline.partition(":")
        if not module or not name:
            raise InvalidRequest(f"--pipeline is MODULE:FUNCTION, e.g. {DEFAULT_PIPELINE}; got {self.pipeline!r}")


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """A compiled package to upload as a pipeline version.

    Attributes:
        package: The compiled YAML.
        pipeline_name: The pipeline to add a version to (created on the first upload).
        pipeline_version: The version's name; None names it after the package's content hash, so uploading
            the same file again adds nothing (Kubeflow itself names a new pipeline's first version after
            the pipeline).
    """

    package: str = field(default=DEFAULT_PACKAGE, metadata={"help": "the compiled pipeline YAML"})
    pipeline_name: str = field(default=DEFAULT_NAME, metadata={"help": "the pipeline's name in Kubeflow"})
    pipeline_version: str | None = field(
        default=None, metadata={"help": "the version's name (None: named after the package's content hash)"}
    )

    def __post_init__(self) -> None:
        if not self.pipeline_name.strip():
            raise InvalidRequest(f"the pipeline name is empty; the default is {DEFAULT_NAME}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """One run of a compiled package.

    Attributes:
        package: The compiled YAML.
        experiment: The experiment the run goes in (created when missing).
        run_name: The run's name; None names it after the pipeline and the UTC time.
    """

    package: str = field(default=DEFAULT_PACKAGE, metadata={"help": "the compiled pipeline YAML"})
    experiment: str = field(default="musicrl", metadata={"help": "the experiment (created when missing)"})
    run_name: str | None = field(
        default=None, metadata={"help": "the run's name (None: musicrl-retraining-<UTC time>)"}
    )


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A recurring run, replaced by name on every ``schedule``.

    Attributes:
        cron: When to run, in Kubeflow's six-field cron (seconds first): ``0 0 3 * * *`` is 03:00 daily.
        schedule_name: The recurring run's name: the key that makes ``schedule`` idempotent.
        experiment: The experiment its runs go in.
        package: The compiled YAML, uploaded as a pipeline version first.
        pipeline_name: The pipeline it is uploaded to.
        pipeline_version: The version's name (default: content hash).
    """

    cron: str = field(metadata={"help": "six-field cron in UTC, seconds first: '0 0 3 * * *' is 03:00 daily"})
    schedule_name: str = field(default=DEFAULT_NAME, metadata={"help": "the recurring run's name (its identity)"})
    experiment: str = field(default="musicrl", metadata={"help": "the experiment (created when missing)"})
    package: str = field(default=DEFAULT_PACKAGE, metadata={"help": "the compiled pipeline YAML"})
    pipeline_name: str = field(default=DEFAULT_NAME, metadata={"help": "the pipeline's name in Kubeflow"})
    pipeline_version: str | None = field(
        default=None, metadata={"help": "the version's name (None: named after the package's content hash)"}
    )

    def __post_init__(self) -> None:
        fields = self.cron.split()
        if not (self.cron.startswith("@") or len(fields) == 6):
            hint = ""
            if len(fields) == 5:
                # Kubeflow reads five fields as seconds..month: '0 3 * * *' would run at minute 3 of every hour
                hint = f" (for a five-field crontab '{self.cron}', write '0 {self.cron}')"
            raise InvalidRequest(
                f"the cron expression must have six fields, seconds first, or be a descriptor such as @daily; "
                f"got {self.cron!r}{hint}"
            )
        if not self.schedule_name.strip():
            raise InvalidRequest(f"the schedule name is empty; the default is {DEFAULT_NAME}")
