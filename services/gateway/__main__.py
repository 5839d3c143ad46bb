"""Start the gateway; settings come from MUSICRL_* environment variables.

    MUSICRL_GENERATOR_URL=127.0.0.1:8080 MUSICRL_NATS_URL=nats://127.0.0.1:4222 \\
    MUSICRL_CLIP_STORE_URL=/tmp/clips MUSICRL_SECRET_KEY=... python -m services.gateway
"""

from musicrl.entrypoint import run_main
from musicrl.gateway.app import serve_gateway
from musicrl.gateway.config import GatewayConfig
from musicrl.settings import config_from


def main() -> None:
    serve_gateway(config_from(GatewayConfig))


if __name__ == "__main__":
    run_main(main)
