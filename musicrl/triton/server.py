"""``musicrl serve triton``: tritonserver over an exported repository, from the local install.

The install is what ``python -m musicrl.triton.install`` (``make setup``) writes: the binary and its
libraries, the backends, and the backends' Python environment (see that module for why it has its own
NumPy). The server replaces this process (``exec``), so SIGTERM reaches tritonserver itself, which stops
taking requests and waits up to ``exit_timeout_s`` for those in flight.
"""

import os
from pathlib import Path

from musicrl.errors import InvalidRequest
from musicrl.triton.config import TritonServeConfig
from musicrl.triton.install import DEFAULT_HOME


def tritonserver_command(config: TritonServeConfig) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run tritonserver for ``config``.

    Raises:
        InvalidRequest: No install at ``triton_home``, or no repository.
    """
    home = Path(config.triton_home) if config.triton_home else DEFAULT_HOME
    wheel = home / "pytriton"
    binary = wheel / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.exists():
        raise InvalidRequest(
            f"no tritonserver under {home}: run `make setup` (or python -m musicrl.triton.install --home {home})"
        )
    repository = Path(config.repository)
    if not repository.is_dir():
        raise InvalidRequest(f"no model repository at {repository}: write one with `musicrl triton export --out DIR`")
    metrics = ["--allow-metrics", "false"]
    if config.metrics_port:
        metrics = ["--metrics-address", config.host, "--metrics-port", str(config.metrics_port)]
    command = [
        str(binary),
        "--model-repository",
        str(repository.resolve()),
        "--backend-directory",
        str(home / "backends"),
        "--http-address",
        config.host,
        "--http-port",
        str(config.http_port),
        "--grpc-address",
        config.host,
        "--grpc-port",
        str(config.grpc_port),
        *metrics,
        "--exit-timeout-secs",
        str(round(config.exit_timeout_s)),
    ]
    env = dict(os.environ)
    libraries = str(wheel / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libraries, env.get("LD_LIBRARY_PATH")) if p)
    # the stub runs the Python found first on PATH: the backends' environment (NumPy 1, then our packages)
    env["PATH"] = os.pathsep.join((str(home / "backend-env" / "bin"), env.get("PATH", "")))
    return command, env


def serve_triton(config: TritonServeConfig) -> None:
    """Replace this process with tritonserver (returns only by raising)."""
    command, env = tritonserver_command(config)
    os.execve(command[0], command, env)
