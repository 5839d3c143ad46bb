"""The platform's policy registry: numbered policy versions, one JSON file each, under an artefact store URL.

A candidate that passed the offline gate becomes ``v<n>``: ``<registry>/versions/v<n>.json`` holds its model
URI, the policy it was finetuned from, the training run, the snapshot it learned from, its gate metrics and
report, and when it was registered. A version is written once and never rewritten, so a version number means
the same model for as long as the registry exists.

Two registrations at the same time (two pipeline runs) must not both become ``v<n>``: each version file is
created exclusively, which fails when the file exists, and the loser takes the next number. On S3 that is
``open(mode="xb")`` (s3fs sends ``If-None-Match: *``, and the object appears whole); on a local disk a
temporary file hard-linked into place (``link()`` refuses an existing name, and readers never see a
half-written file); elsewhere ``open(mode="xb")`` where the store has it, else an existence check, which
leaves concurrent registrations unguarded (logged once per registry).
"""

import datetime
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from musicrl.data.dataset import join_url
from musicrl.errors import InvalidRequest, NotFound
from musicrl.pipeline.model_registry import ModelRegistryConfig, record_version


logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VERSIONS_FOLDER = "versions"
_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.json$")
_MAX_ATTEMPTS = 100  # numbers tried before giving up: only a storm of concurrent registrations gets near it


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One registered policy version.

    Attributes:
        version: ``v<n>``, assigned by the registry.
        model_uri: The policy checkpoint (any model URI the generator loads).
        parent_uri: The policy it was finetuned from (the stable policy of its run), if known.
        training_run: The run that produced it (a Kubeflow run id), if known.
        snapshot_hash: Content hash of the feedback snapshot it was trained on, if known.
        metrics: The offline gate's numbers (win rates, reward differences, KL), by name.
        gate_report_uri: The gate's report, if any.
        created_at: When it was registered (UTC).
    """

    version: str
    model_uri: str
    created_at: datetime.datetime
    parent_uri: str | None = None
    training_run: str | None = None
    snapshot_hash: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    gate_report_uri: str | None = None

    def __post_init__(self) -> None:
        if not _VERSION_FILE.match(f"{self.version}.json"):
            raise InvalidRequest(f"a policy version is 'v' and a positive number, e.g. v3; got {self.version!r}")
        if not self.model_uri.strip():
            raise InvalidRequest("a policy version needs a model_uri")
        if self.created_at.tzinfo is None:
            raise InvalidRequest("created_at must carry a time zone (the registry records UTC)")
        for name, value in self.metrics.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidRequest(f"metric {name!r} must be a finite number, got {value!r}")

    @property
    def number(self) -> int:
        """The ``n`` of ``v<n>``."""
        return int(self.version[1:])

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "PolicyVersion":
        """Read a version file's content; unknown fields (a newer schema's) are ignored.

        Raises:
            InvalidRequest: A required field is missing or a value is malformed.
        """
        try:
            return cls(
                version=str(data["version"]),
                model_uri=str(data["model_uri"]),
                created_at=datetime.datetime.fromisoformat(str(data["created_at"])),
                parent_uri=_optional_str(data.get("parent_uri")),
                training_run=_optional_str(data.get("training_run")),
                snapshot_hash=_optional_str(data.get("snapshot_hash")),
                metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                gate_report_uri=_optional_str(data.get("gate_report_uri")),
            )
        except KeyError as e:
            raise InvalidRequest(f"policy version {data.get('version', '?')!r} lacks field {e}") from e
        except (TypeError, ValueError, AttributeError) as e:
            if isinstance(e, InvalidRequest):
                raise
            raise InvalidRequest(f"policy version {data.get('version', '?')!r} is malformed: {e}") from e

    def to_wire(self) -> dict[str, Any]:
        """The version file's content (JSON-ready; ``created_at`` in ISO 8601 with its offset)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "version": self.version,
            "model_uri": self.model_uri,
            "parent_uri": self.parent_uri,
            "training_run": self.training_run,
            "snapshot_hash": self.snapshot_hash,
            "metrics": dict(self.metrics),
            "gate_report_uri": self.gate_report_uri,
            "created_at": self.created_at.isoformat(),
        }


def _optional_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


class PolicyRegistry:
    """Policy versions under ``url`` (a local path, ``file://``, ``s3://`` or any fsspec URL).

    Args:
        url: The registry's root; created on the first registration.
        model_registry: Also record each new version in this Kubeflow Model Registry (None: only here).
    """

    def __init__(self, url: str, *, model_registry: ModelRegistryConfig | None = None) -> None:
        self.url = url
        self.model_registry = model_registry
        self._warned_unguarded = False

    def register(
        self,
        model_uri: str,
        *,
        parent_uri: str | None = None,
        training_run: str | None = None,
        snapshot_hash: str | None = None,
        metrics: Mapping[str, float] | None = None,
        gate_report_uri: str | None = None,
        created_at: datetime.datetime | None = None,
    ) -> PolicyVersion:
        """Record ``model_uri`` as the next version ``v<n>``.

        A model URI that is already registered returns its existing version instead: a retried pipeline
        step must not give the same checkpoint a second number.

        Args:
            model_uri: The policy checkpoint.
            parent_uri: The policy it was finetuned from.
            training_run: The run that produced it.
            snapshot_hash: The snapshot it learned from.
            metrics: The offline gate's numbers.
            gate_report_uri: The gate's report.
            created_at: Registration time (default: now, UTC).

        Returns:
            The new version, or the existing one for an already registered ``model_uri``.

        Raises:
            InvalidRequest: A malformed field.
            UpstreamUnavailable: The version was written here but the Kubeflow Model Registry refused it.
        """
        existing = [v for v in self.list() if v.model_uri == model_uri]
        if existing:
            logger.info("%s is already registered as %s", model_uri, existing[0].version)
            return existing[0]
        fs, root = fsspec.core.url_to_fs(join_url(self.url, VERSIONS_FOLDER))
        fs.makedirs(root, exist_ok=True)
        number = max(_numbers(fs, root), default=0) + 1
        when = created_at or datetime.datetime.now(datetime.UTC)
        for _ in range(_MAX_ATTEMPTS):
            version = PolicyVersion(
                f"v{number}", model_uri, when, parent_uri, training_run, snapshot_hash, dict(metrics or {}),
                gate_report_uri,
            )  # fmt: skip
            if self._create(fs, f"{root}/{version.version}.json", version):
                logger.info("registered %s as %s in %s", model_uri, version.version, self.url)
                if self.model_registry is not None:
                    record_version(self.model_registry, version, self.url)
                return version
            number += 1  # another registration took this number first
        raise InvalidRequest(f"could not claim a version number in {self.url} after {_MAX_ATTEMPTS} tries")

    def list(self) -> list[PolicyVersion]:
        """Every version, oldest (``v1``) first; an empty list for a registry that does not exist yet."""
        fs, root = fsspec.core.url_to_fs(join_url(self.url, VERSIONS_FOLDER))
        paths = [f"{root}/v{n}.json" for n in sorted(_numbers(fs, root))]
        return [_parse(fs.cat_file(path), path) for path in paths]

    def get(self, version: str) -> PolicyVersion:
        """The version named ``version`` (``v3``; a bare ``3`` is accepted too).

        Raises:
            InvalidRequest: ``version`` is not of the form ``v<n>``.
            NotFound: No such version in this registry.
        """
        name = version if version.startswith("v") else f"v{version}"
        if not _VERSION_FILE.match(f"{name}.json"):
            raise InvalidRequest(f"a policy version is 'v' and a positive number, e.g. v3; got {version!r}")
        fs, root = fsspec.core.url_to_fs(join_url(self.url, VERSIONS_FOLDER))
        path = f"{root}/{name}.json"
        try:
            return _parse(fs.cat_file(path), path)
        except FileNotFoundError as e:
            known = sorted(_numbers(fs, root))
            listing = f"it holds v1 to v{known[-1]}" if known else "it holds no versions yet"
            raise NotFound(f"no policy version {name} in the registry at {self.url}; {listing}") from e

    def latest(self) -> PolicyVersion | None:
        """The newest version, or None when nothing is registered yet."""
        fs, root = fsspec.core.url_to_fs(join_url(self.url, VERSIONS_FOLDER))
        numbers = _numbers(fs, root)
        return self.get(f"v{max(numbers)}") if numbers else None

    def _create(self, fs: fsspec.AbstractFileSystem, path: str, version: PolicyVersion) -> bool:
        """Write ``path`` unless it exists; False when another registration holds it."""
        data = (json.dumps(version.to_wire(), indent=2, sort_keys=True) + "\n").encode()
        if isinstance(fs, LocalFileSystem):
            return _create_local(path, data)
        try:
            with fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError) as e:  # a store with no exclusive create
            if not self._warned_unguarded:
                logger.warning("%s cannot create files exclusively (%s): concurrent registrations unguarded", fs, e)
                self._warned_unguarded = True
        if fs.exists(path):
            return False
        with fs.open(path, "wb") as f:
            f.write(data)
        return True


def _create_local(path: str, data: bytes) -> bool:
    # An exclusive open() makes the file visible empty until the write lands; a reader listing the registry
    # then would read an empty version. Writing a temporary file and hard-linking it into place publishes
    # the complete file in one step, and link() refuses an existing name just as O_EXCL does.
    folder = os.path.dirname(path)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".version-", delete=False) as f:
        f.write(data)
    try:
        os.link(f.name, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(f.name)


def _numbers(fs: fsspec.AbstractFileSystem, root: str) -> list[int]:
    """The ``n`` of every ``v<n>.json`` in ``root`` (none for a folder that does not exist yet)."""
    try:
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in map(_VERSION_FILE.match, names) if m]


def _parse(raw: bytes, path: str) -> PolicyVersion:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{path} is not a JSON policy version: {e}") from e
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{path} must hold a JSON object")
    return PolicyVersion.from_wire(data)


def version_table(versions: list[PolicyVersion]) -> str:
    """A plain-text table of ``versions``, one line each, for a terminal (``musicrl policy list``).

    Args:
        versions: The versions, in the order to show them.

    Returns:
        Header and rows, columns padded to their widest cell, ending in a newline.
    """
    header = ("VERSION", "CREATED (UTC)", "SNAPSHOT", "MODEL URI", "PARENT URI", "METRICS")
    rows = [
        (
            v.version,
            v.created_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
            (v.snapshot_hash or "-")[:12],  # a prefix names a snapshot as a short git hash names a commit
            v.model_uri,
            v.parent_uri or "-",
            " ".join(f"{name}={value:.4g}" for name, value in sorted(v.metrics.items())) or "-",
        )
        for v in versions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
