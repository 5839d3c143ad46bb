"""The Triton repository's configuration text, the settings, and the server's command line."""

from pathlib import Path

import pytest

from musicrl.errors import InvalidRequest
from musicrl.triton.config import TritonExportConfig, TritonServeConfig
from musicrl.triton.repository import model_config
from musicrl.triton.server import tritonserver_command


INPUTS = [
    {"name": "prompt", "datatype": "BYTES", "shape": [-1]},
    {"name": "seed", "datatype": "INT64", "shape": [-1]},
]
OUTPUTS = [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}]


def test_the_configuration_declares_the_contract_and_sorted_escaped_parameters():
    text = model_config("generator", INPUTS, OUTPUTS, {"MUSICRL_Z": "z", "MUSICRL_A": 'say "hi"'}, "KIND_CPU", 2)
    assert '{ name: "prompt" data_type: TYPE_STRING dims: [ -1 ] }' in text  # required
    assert '{ name: "seed" data_type: TYPE_INT64 dims: [ -1 ] optional: true }' in text
    assert '{ name: "audio" data_type: TYPE_FP32 dims: [ -1, -1 ] }' in text
    assert "max_batch_size: 0" in text and "count: 2 kind: KIND_CPU" in text
    assert text.index("MUSICRL_A") < text.index("MUSICRL_Z")
    assert 'string_value: "say \\"hi\\""' in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"device": "tpu"}, "cpu or cuda"), ({"instances": 0}, "instances must be >= 1"), ({"out": ""}, "--out")],
)
def test_bad_export_settings_are_refused(settings, message):
    with pytest.raises(InvalidRequest, match=message):
        TritonExportConfig(**{"out": "repo", **settings})


def test_the_server_command_needs_the_install_and_a_repository(tmp_path):
    with pytest.raises(InvalidRequest, match="make setup"):
        tritonserver_command(TritonServeConfig(repository=str(tmp_path), triton_home=str(tmp_path / "none")))
    home = tmp_path / "home"
    binary = home / "pytriton" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.touch()
    with pytest.raises(InvalidRequest, match="musicrl triton export"):
        tritonserver_command(TritonServeConfig(repository=str(tmp_path / "missing"), triton_home=str(home)))
    command, env = tritonserver_command(
        TritonServeConfig(repository=str(tmp_path), triton_home=str(home), metrics_port=0, http_port=9000)
    )
    assert command[0] == str(binary)
    assert command[command.index("--http-port") + 1] == "9000" and "--allow-metrics" in command
    assert env["PATH"].split(":")[0] == str(Path(home) / "backend-env" / "bin")  # the backend's Python first
    assert env["LD_LIBRARY_PATH"].startswith(str(home / "pytriton" / "nvidia_pytriton.libs"))
