"""Start the gateway; settings come from MUSICRL_* environment variables.

    MUSICRL_GENERATOR_URL=127.0.0.1:8080 MUSICRL_NATS_URL=nats://127.0.0.1:4222 \\
    MUSICRL_CLIP_STORE_URL=/tmp/clips MUSICRL_SECRET_KEY=... python -m services.gateway
"""

import uvicorn

from musicrl.entrypoint import run_main
from musicrl.gateway.app import create_app
from musicrl.gateway.config import GatewayConfig
from musicrl.settings import config_from


def main() -> None:
    config = config_from(GatewayConfig)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_config=None, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    run_main(main)
