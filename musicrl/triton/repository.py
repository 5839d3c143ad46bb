"""``musicrl triton export``: the generator and the rewards as a Triton model repository.

Each model is a folder with a ``config.pbtxt`` and ``1/model.py``:

* the configuration's inputs and outputs are written from the same metadata the KServe servers report
  (``musicrl.serving.generation_api`` and ``reward_api``), so names, types and shapes cannot drift apart;
  every input but ``prompt`` is optional, as in the V2 contract;
* the model's settings travel as ``MUSICRL_*`` parameters, read by the same settings code that reads the
  KServe servers' environment. Besides the export's own flags, every variable of the generator's or the
  reward service's settings set where ``musicrl triton export`` runs is copied into the matching models
  (``MUSICRL_MAX_DURATION_S=30 musicrl triton export ...``), except the KServe server's own (ports,
  gRPC caps): the same names configure both runtimes;
* ``model.py`` is one import of :mod:`musicrl.triton.backend`: the repository holds no logic, so upgrading
  the package upgrades every exported repository.

``max_batch_size`` is 0: the contract's first dimension is the request's own batch of prompts, which the
engine decodes together, and Triton's dynamic batcher would only group whole requests (it needs a batch
dimension Triton owns, which would change the shapes clients send).

The files depend only on the configuration (sorted parameters, no dates), so exporting twice gives the
same bytes.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from musicrl.settings import env_names
from musicrl.triton.config import DEVICE_KINDS, TritonExportConfig


GENERATOR = "generator"
REWARDS = ("text-adherence", "quality", "preference")
MODEL_VERSION = "1"
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64"}
_MODEL_FILE = '''"""Triton Python backend entry point of MusicRL's {name!r} model: see musicrl.triton.backend."""

from musicrl.triton.backend import {cls} as TritonPythonModel  # noqa: F401
'''


def export_repository(config: TritonExportConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """Write the model repository; returns the names of the models written.

    Args:
        config: What to export, and where.
        environ: Where further settings are read from (default ``os.environ``).

    Raises:
        InvalidRequest: A bad configuration (see :class:`TritonExportConfig`).
    """
    from musicrl.config import GeneratorServiceConfig, ServerConfig
    from musicrl.serving import generation_api, reward_api

    out = Path(config.out)
    environ = dict(os.environ) if environ is None else environ
    kserve_only = set(env_names(ServerConfig)) - {"MUSICRL_TORCH_THREADS"}
    shared = {"MUSICRL_DEVICE": config.device}
    generator = {
        **_settings(environ, env_names(GeneratorServiceConfig), kserve_only),
        **shared,
        "MUSICRL_MODEL_URI": config.model_uri,
        "MUSICRL_MODEL_NAME": GENERATOR,
    }
    if config.clip_store_url:
        generator["MUSICRL_CLIP_STORE_URL"] = config.clip_store_url
    models = {
        GENERATOR: (
            "GeneratorModel",
            generation_api.metadata_inputs(),
            generation_api.metadata_outputs(),
            generator,
        )
    }
    uris = {
        "text-adherence": config.text_adherence_uri,
        "quality": config.quality_uri,
        "preference": config.preference_uri,
    }
    for name in REWARDS:
        uri = uris[name]
        if uri:
            env_name = f"MUSICRL_{name.replace('-', '_').upper()}_URI"
            models[name] = (
                "RewardModel",
                reward_api.metadata_inputs(),
                reward_api.metadata_outputs(),
                {**shared, env_name: uri},
            )
    for name, (cls, inputs, outputs, parameters) in models.items():
        folder = out / name
        (folder / MODEL_VERSION).mkdir(parents=True, exist_ok=True)
        text = model_config(
            name, inputs, outputs, parameters, DEVICE_KINDS[config.device.split(":")[0]], config.instances
        )
        (folder / "config.pbtxt").write_text(text)
        (folder / MODEL_VERSION / "model.py").write_text(_MODEL_FILE.format(name=name, cls=cls))
    return list(models)


def _settings(environ: Mapping[str, str], names: Sequence[str], excluded: set[str]) -> dict[str, str]:
    return {name: environ[name] for name in names if name in environ and name not in excluded}


def model_config(
    name: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    parameters: Mapping[str, str],
    kind: str,
    instances: int,
) -> str:
    """A Python-backend ``config.pbtxt`` for tensors given as V2 metadata (name, datatype, shape).

    Args:
        name: The model's name (its folder's).
        inputs: Input tensors; all but ``prompt`` are optional.
        outputs: Output tensors.
        parameters: String parameters (``MUSICRL_*`` settings), written sorted.
        kind: ``KIND_CPU`` or ``KIND_GPU``.
        instances: Instances of the model.

    Returns:
        The configuration's text.
    """
    lines = [f'name: "{name}"', 'backend: "python"', "max_batch_size: 0"]
    lines.append("input [")
    lines.append(",\n".join(_tensor(t, optional=t["name"] != "prompt") for t in inputs))
    lines.append("]")
    lines.append("output [")
    lines.append(",\n".join(_tensor(t, optional=False) for t in outputs))
    lines.append("]")
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    for key in sorted(parameters):
        value = parameters[key].replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def _tensor(tensor: Mapping[str, Any], *, optional: bool) -> str:
    dims = ", ".join(str(d) for d in tensor["shape"])
    text = f'  {{ name: "{tensor["name"]}" data_type: {_TRITON_TYPES[tensor["datatype"]]} dims: [ {dims} ]'
    return text + (" optional: true }" if optional else " }")
