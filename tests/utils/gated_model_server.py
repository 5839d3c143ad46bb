"""A model server whose model finishes loading only when a file appears: readiness can be observed.

python -m tests.utils.gated_model_server GATE_FILE
"""

import pathlib
import sys
import time

from musicrl.config import ServerConfig
from musicrl.entrypoint import run_main
from musicrl.serving.kserve_compat import Model
from musicrl.serving.server import serve
from musicrl.settings import config_from


class GatedModel(Model):
    """Stands in for a checkpoint whose download takes a while; load() waits for the gate file."""

    def __init__(self, gate: pathlib.Path) -> None:
        super().__init__("gated")
        self.gate = gate

    def load(self) -> bool:
        while not self.gate.exists():
            time.sleep(0.05)
        if self.gate.read_text() == "fail":
            raise RuntimeError("weights are corrupt")
        self.ready = True
        return self.ready


if __name__ == "__main__":
    run_main(lambda: serve([GatedModel(pathlib.Path(sys.argv[1]))], config_from(ServerConfig)))
