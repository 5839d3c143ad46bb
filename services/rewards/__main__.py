"""Start the reward service; settings come from MUSICRL_* environment variables.

MUSICRL_TEXT_ADHERENCE_URI=tiny://clap?seed=0 python -m services.rewards
"""

from musicrl.config import RewardServiceConfig
from musicrl.entrypoint import run_main
from musicrl.serving.server import serve
from musicrl.settings import config_from
from services.rewards.model import reward_models


def main() -> None:
    config = config_from(RewardServiceConfig)
    serve(reward_models(config), config.server)


if __name__ == "__main__":
    run_main(main)
