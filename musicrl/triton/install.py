"""Set up a local tritonserver (``make setup`` runs this): the binary, its backends, and their Python.

Triton's own Python API (pytriton) needs ``numpy<2`` and does not run on Python 3.11, so only the binary of
the ``nvidia-pytriton`` wheel is used: the wheel is installed without dependencies into ``HOME/pytriton``,
and its backends are copied to ``HOME/backends`` with the Python 3.11 stub in ``python/``.

The stub embeds the system's libpython (Debian's, which it links), so the backends' environment must be a
virtualenv of that same interpreter: with another build of 3.11 (a pyenv one) the stub would load that
build's standard-library extensions, which need symbols its libpython lacks. The stub also reads BYTES
tensors through NumPy's C API, compiled against NumPy 1; with our NumPy 2 a BYTES input crashes it. So
``HOME/backend-env`` is a virtualenv of the system's python3.11 holding only ``numpy<2``, whose ``.pth``
file then adds this project's site-packages (torch, transformers, musicrl): the models import exactly the
code the KServe servers run, and nothing but NumPy is installed twice. (Wheels for CPython 3.11 run on any
3.11 patch release; torch, SciPy and the rest, built against NumPy 2, run with NumPy 1.26 as well.)

    python -m musicrl.triton.install [--home .triton]
"""

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


PYTRITON = "nvidia-pytriton==0.7.0"  # tritonserver 2.51.0 with the Python backend
BACKEND_NUMPY = "numpy==1.26.4"  # the last NumPy 1, which the stub's C API was built against
DEFAULT_HOME = Path(__file__).resolve().parents[2] / ".triton"
SYSTEM_BIN = "/usr/bin:/bin"


def install(home: Path) -> None:
    """Install tritonserver, its backends and the backends' environment under ``home`` (idempotent)."""
    home.mkdir(parents=True, exist_ok=True)
    wheel = home / "pytriton"
    if not (wheel / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        _pip_install(sys.executable, "--no-deps", "--upgrade", "--target", str(wheel), PYTRITON)
    tritonserver = wheel / "pytriton" / "tritonserver"
    backends = home / "backends"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(tritonserver / "backends", backends)
        stub = tritonserver / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(stub / "triton_python_backend_stub", backends / "python" / "triton_python_backend_stub")
    env = home / "backend-env"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([_system_python(), "-m", "venv", str(env)], check=True)
        _pip_install(str(python), BACKEND_NUMPY)
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # after the env's own numpy: this project's packages, with their .pth files (the editable install)
    ours = sysconfig.get_paths()["purelib"]
    (site_packages / "zz_musicrl_site.pth").write_text(f"import site; site.addsitedir({ours!r})\n")


def _system_python() -> str:
    """The interpreter of this Python version whose libpython the stub links: the system's (Debian's, in
    /usr/bin) where there is one, else this venv's base interpreter (an official Python image's, built shared)."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = shutil.which(name, path=SYSTEM_BIN) or getattr(sys, "_base_executable", None)
    if found is None:
        raise SystemExit(f"tritonserver's Python backend needs the system's {name}: apt-get install {name}-venv")
    return found


def _pip_install(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", "install", "--quiet", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="where to install (default: .triton)")
    install(parser.parse_args().home)


if __name__ == "__main__":
    main()
