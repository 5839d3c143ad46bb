"""Start the rollout controller (one replica); settings come from MUSICRL_* environment variables.

MUSICRL_NATS_URL=nats://127.0.0.1:4222 MUSICRL_TARGET=local python -m services.rollout
"""

from musicrl.entrypoint import run_main
from musicrl.rollout.config import ControllerConfig
from musicrl.rollout.service import run_controller
from musicrl.settings import config_from


def main() -> None:
    run_controller(config_from(ControllerConfig))


if __name__ == "__main__":
    run_main(main)
