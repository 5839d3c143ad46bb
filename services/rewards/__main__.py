"""Start the reward service; settings come from MUSICRL_* environment variables.

MUSICRL_TEXT_ADHERENCE_URI=tiny://clap?seed=0 python -m services.rewards
"""

import functools

from musicrl.config import RewardServiceConfig
from musicrl.entrypoint import run_main
from musicrl.rewards.registry import load_reward
from musicrl.serving.server import serve
from musicrl.settings import config_from
from services.rewards.model import RewardServingModel


def main() -> None:
    config = config_from(RewardServiceConfig)
    models = [
        RewardServingModel(
            name,
            functools.partial(load_reward, name, uri, device=config.device),
            config.batching,
            config.max_clips_per_request,
        )
        for name, uri in config.models().items()
    ]
    serve(models, config.server)


if __name__ == "__main__":
    run_main(main)
