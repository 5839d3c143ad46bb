"""Each role's extra, installed alone in a fresh venv, runs its service: the images install exactly these extras.

What it costs and what is checked (measured on a shared 2-core machine, ~90 s for the module):
- The light roles (gateway, recorder, rollout) are installed for real and started on loopback. One wheelhouse
  of their union is built once per module (``pip wheel``, ~15-20 s); each role then installs from it alone
  (``--no-index --find-links``: 6-9 s, against ~35 s from the package indexes) and answers its health check.
  In each, the ``musicrl`` command shows its help and ``bus provision``'s (the chart's Job runs it in the recorder
  image), and ``musicrl generate`` exits naming the extra it lacks instead of a traceback.
- The torch roles (serving, train, pipeline) would unpack ~1.6 GB each (97 s for serving, measured alone): by default
  what their modules import at module level is checked against what the extra installs (~10 s each).
  ``MUSICRL_TEST_TORCH_ROLE_INSTALL=1`` also installs each alone in a fresh venv (~100 s each) and runs it:
  ``serving`` starts the generator, ``train`` runs two steps of an RL stage, ``pipeline`` compiles the pipeline.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
import yaml

from musicrl.bus.local_server import LocalNatsServer
from musicrl.errors import MissingExtra
from tests.utils.import_graph import GRAPH_SCRIPT, ROOT, declared_closure
from tests.utils.processes import ServiceProcess, free_port, stop_process, wait_for_url


pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "musicrl", "services", "pipelines")
CONSTRAINTS = ROOT / "constraints.txt"
LIGHT_ROLES = ("gateway", "recorder", "rollout")
HEAVY = ("torch", "transformers", "tokenizers", "kserve")
TORCH_ROLE_MODULES = {
    "serving": (
        "services.generator.__main__",
        "services.rewards.__main__",
        # the reward models the service loads by URI
        "musicrl.rewards.text_adherence",
        "musicrl.rewards.quality",
        "musicrl.rewards.preference",
        "musicrl.rewards.clap_preference",
    ),
    "train": (
        "musicrl.rl.trainer",
        "musicrl.rewards.train_quality",
        "musicrl.rewards.train_preference",
        "musicrl.data.snapshot",
    ),
    # every step's code, the KFP wiring and the CLI the image's entrypoint runs
    "pipeline": ("pipelines.retraining", "musicrl.pipeline.steps", "musicrl.pipeline.gate", "musicrl.cli"),
}


def _pip(*args: str | Path, timeout_s: float = 600) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--quiet", *map(str, args)], capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")


def _fresh_venv(path: Path) -> Path:
    # without pip: this interpreter's pip installs into it (--python), which saves an ensurepip per venv
    venv.EnvBuilder(with_pip=False).create(path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The musicrl wheel, built from a copy of the sources (setuptools writes build/ next to them)."""
    root = tmp_path_factory.mktemp("role-install")
    source = root / "musicrl"  # not "src": setuptools then takes it for a src layout and fails to build
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    _pip("wheel", "--no-deps", "--wheel-dir", root / "dist", source)
    return next((root / "dist").glob("musicrl-*.whl"))


@pytest.fixture(scope="module")
def light_wheelhouse(project_wheel: Path) -> Path:
    """Every wheel the light roles need, collected once."""
    wheels = project_wheel.parent.parent / "wheels"
    _pip("wheel", "--wheel-dir", wheels, "-c", CONSTRAINTS, f"{project_wheel}[{','.join(LIGHT_ROLES)}]")
    return wheels


def _outside_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH, which could put the repository's sources first."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@contextlib.contextmanager
def _service(python: Path, module: str, env: Mapping[str, str], cwd: Path, url: str) -> Iterator[None]:
    """``python -m module`` from ``cwd`` (outside the repository: it must run from the installed package)."""
    full_env = {**_outside_env(), "PYTHONUNBUFFERED": "1", "MUSICRL_CACHE_DIR": str(cwd / "cache"), **env}
    log_path = cwd / f"{module}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(python), "-m", module], cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_url(ServiceProcess(process, 0, 0, log_path), url, timeout_s=120)
        yield
    finally:
        stop_process(process, timeout_s=30)


def _role_env(role: str, nats_url: str, work: Path, port: int) -> tuple[str, dict[str, str], str]:
    """The entrypoint, its settings and its health URL for ``role``."""
    base = {"MUSICRL_NATS_URL": nats_url}
    if role == "gateway":
        settings = {
            "MUSICRL_GENERATOR_URL": "127.0.0.1:1",  # liveness needs no generator
            "MUSICRL_CLIP_STORE_URL": str(work / "clips"),
            "MUSICRL_SECRET_KEY": "role-install-test",
            "MUSICRL_ENVIRONMENT": "development",
            "MUSICRL_STABLE_MODEL_URI": "tiny://musicgen?seed=0",
            "MUSICRL_HOST": "127.0.0.1",
            "MUSICRL_PORT": str(port),
        }
        return "services.gateway", {**base, **settings}, f"http://127.0.0.1:{port}/healthz"
    metrics = {"MUSICRL_METRICS_HOST": "127.0.0.1", "MUSICRL_METRICS_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/metrics"
    if role == "recorder":
        return "services.recorder", {**base, **metrics, "MUSICRL_DATASET_URL": str(work / "events")}, url
    return "services.rollout", {**base, **metrics, "MUSICRL_STATE_DIR": str(work / "state")}, url


def _musicrl(
    python: Path, cwd: Path, *argv: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The venv's ``musicrl`` console script (what a shell in the image finds on PATH), run outside the repository."""
    return subprocess.run(
        [str(python.parent / "musicrl"), *map(str, argv)],
        cwd=cwd,
        env={**_outside_env(), "MUSICRL_CACHE_DIR": str(cwd / "cache"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _check_the_cli_runs(role: str, python: Path, cwd: Path) -> None:
    """The parser needs only the base dependencies; a command whose extra is missing says which one to install."""
    for argv in (["--help"], ["bus", "provision", "--help"], ["serve", role, "--help"]):
        result = _musicrl(python, cwd, *argv)
        assert result.returncode == 0, f"musicrl {' '.join(argv)} in the {role} venv:\n{result.stderr}"
        assert result.stdout.startswith("usage: musicrl"), result.stdout
    generate = _musicrl(python, cwd, "generate", "piano", "--model", "tiny://musicgen?seed=0", "-o", "x.wav")
    assert generate.returncode == MissingExtra.exit_code, generate.stderr
    assert "install musicrl[serving]" in generate.stderr and "Traceback" not in generate.stderr, generate.stderr
    assert not (cwd / "x.wav").exists()


def _installed(python: Path, cwd: Path) -> dict[str, str]:
    """Where the venv's musicrl lives, and which heavy packages it can import."""
    probe = (
        "import importlib.util, json, musicrl, services; "
        f"print(json.dumps({{'musicrl': musicrl.__file__, "
        f"'heavy': [n for n in {HEAVY!r} if importlib.util.find_spec(n)]}}))"
    )
    result = subprocess.run([str(python), "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("role", LIGHT_ROLES)
def test_light_role_installs_alone_and_answers_its_health_check(
    role: str, project_wheel: Path, light_wheelhouse: Path, tmp_path: Path
) -> None:
    python = _fresh_venv(tmp_path / "venv")
    _pip(
        "--python", python, "install", "--no-index", "--find-links", light_wheelhouse,
        "-c", CONSTRAINTS, f"{project_wheel}[{role}]",
    )  # fmt: skip
    installed = _installed(python, tmp_path)
    assert installed["musicrl"].startswith(str(tmp_path / "venv")), "ran the repository's copy, not the venv's"
    assert installed["heavy"] == [], f"the {role} extra installs {installed['heavy']}"
    _check_the_cli_runs(role, python, tmp_path)
    if role == "gateway":  # what NOTES.txt tells an operator to run to mint a key
        keys = tmp_path / "keys" / "api-keys.json"
        minted = _musicrl(python, tmp_path, "apikey", "new", "--id", "ci", "--scopes", "generate", "--keys-file", keys)
        assert minted.returncode == 0, minted.stderr
        assert [entry["id"] for entry in json.loads(keys.read_text())] == ["ci"]

    with LocalNatsServer(tmp_path / "nats") as nats:
        module, env, url = _role_env(role, nats.url, tmp_path, free_port())
        with _service(python, module, env, tmp_path, url):
            assert requests.get(url, timeout=5).status_code == 200
        if role == "recorder":  # the chart's provisioning Job runs its command in the recorder image
            provision = _musicrl(python, tmp_path, "bus", "provision", env={"MUSICRL_NATS_URL": nats.url})
            assert provision.returncode == 0, provision.stderr


@pytest.mark.parametrize("role", sorted(TORCH_ROLE_MODULES))
def test_torch_role_imports_only_what_its_extra_declares(role: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", GRAPH_SCRIPT, *TORCH_ROLE_MODULES[role]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout)["imported_distributions"])
    missing = sorted(imported - declared_closure(role))
    assert not missing, f"the {role} modules import {missing}, which the {role!r} extra does not install"


torch_role_install = pytest.mark.skipif(
    os.environ.get("MUSICRL_TEST_TORCH_ROLE_INSTALL") != "1",
    reason="unpacks ~1.6 GB per role (~100 s each); set MUSICRL_TEST_TORCH_ROLE_INSTALL=1",
)


def _torch_role_venv(role: str, project_wheel: Path, folder: Path) -> Path:
    python = _fresh_venv(folder)
    # torch first, as the images and `make setup` do: the pin finds the CPU wheel, never a CUDA build
    _pip("--python", python, "install", "torch==2.13.0")
    _pip("--python", python, "install", "-c", CONSTRAINTS, f"{project_wheel}[{role}]")
    return python


@torch_role_install
def test_serving_role_installs_alone_and_the_generator_is_ready(project_wheel: Path, tmp_path: Path) -> None:
    python = _torch_role_venv("serving", project_wheel, tmp_path / "venv")
    port = free_port()
    env = {
        "MUSICRL_MODEL_URI": "tiny://musicgen?seed=0",
        "MUSICRL_HOST": "127.0.0.1",
        "MUSICRL_HTTP_PORT": str(port),
        "MUSICRL_GRPC_PORT": str(free_port()),
    }
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    with _service(python, "services.generator", env, tmp_path, url):
        assert requests.get(url, timeout=5).status_code == 200


@torch_role_install
def test_train_role_installs_alone_and_runs_an_rl_stage(project_wheel: Path, tmp_path: Path) -> None:
    python = _torch_role_venv("train", project_wheel, tmp_path / "venv")
    config = yaml.safe_load((ROOT / "configs" / "rl" / "tiny-r.yaml").read_text())
    config |= {
        "prompts_file": str(ROOT / "configs" / "rl" / "prompts.txt"),
        "optim": {**config["optim"], "steps": 2},
        "checkpoint_every": 2,
        "out_url": str(tmp_path / "run"),
    }
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump(config))
    result = _musicrl(
        python, tmp_path, "train", "rl", "--config", tmp_path / "stage.yaml", env={"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # one line per step


@torch_role_install
def test_pipeline_role_installs_alone_and_compiles_the_committed_pipeline(project_wheel: Path, tmp_path: Path) -> None:
    python = _torch_role_venv("pipeline", project_wheel, tmp_path / "venv")
    result = _musicrl(python, tmp_path, "pipeline", "compile", "--output", tmp_path / "retraining.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "retraining.yaml").read_text() == (ROOT / "pipelines" / "retraining.yaml").read_text()
