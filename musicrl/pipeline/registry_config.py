"""Where the policy registry is: kept apart from the registry code so the CLI builds its flags cheaply."""

from dataclasses import dataclass, field

from musicrl.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """The policy registry a command reads.

    Attributes:
        registry_url: The registry's root (a path, ``file://``, ``s3://`` or any fsspec URL); the pipeline
            keeps it at ``<artifacts_url>/registry``.
    """

    registry_url: str = field(metadata={"help": "the policy registry (path, file://, s3://; <artifacts>/registry)"})

    def __post_init__(self) -> None:
        if not self.registry_url.strip():
            raise InvalidRequest(
                "the registry URL is empty; give --registry-url, e.g. s3://musicrl/artifacts/registry"
            )
