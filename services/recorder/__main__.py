"""Start the recorder; settings come from MUSICRL_* environment variables.

MUSICRL_NATS_URL=nats://127.0.0.1:4222 MUSICRL_DATASET_URL=/tmp/musicrl-events python -m services.recorder
"""

from musicrl.entrypoint import run_main
from musicrl.recorder.config import RecorderConfig
from musicrl.recorder.recorder import run_recorder
from musicrl.settings import config_from


def main() -> None:
    run_recorder(config_from(RecorderConfig))


if __name__ == "__main__":
    run_main(main)
