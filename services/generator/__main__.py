"""Start the generator service; settings come from MUSICRL_* environment variables.

MUSICRL_MODEL_URI=tiny://musicgen?seed=0 python -m services.generator
"""

from musicrl.config import GeneratorServiceConfig
from musicrl.entrypoint import run_main
from musicrl.serving.server import serve
from musicrl.settings import config_from
from services.generator.model import GeneratorModel


def main() -> None:
    config = config_from(GeneratorServiceConfig)
    serve([GeneratorModel(config)], config.server)


if __name__ == "__main__":
    run_main(main)
