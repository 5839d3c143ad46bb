"""The whole feedback path on loopback: nats-server, a tiny generator, the gateway (and the recorder)."""

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from musicrl.bus.local_server import LocalNatsServer
from musicrl.gateway.auth import Scope, new_api_key
from tests.utils.processes import ServiceProcess, http_service, model_server


TINY = "tiny://musicgen?seed=0"
# name → (scopes, requests per minute)
KEYS = {
    "full": (list(Scope), 100_000),
    "feedback": ([Scope.FEEDBACK], 100_000),
    "slow": ([Scope.GENERATE, Scope.FEEDBACK], 6),  # bucket of one request: the second one is a 429
    "fuzz": ([Scope.GENERATE, Scope.FEEDBACK, Scope.RATE], 100_000),  # no admin: fuzzing must not reroute
}
SECRET = "test-secret-of-at-least-thirty-two-characters"


@dataclass
class Platform:
    nats: LocalNatsServer
    generator: ServiceProcess
    gateway: ServiceProcess
    tokens: dict[str, str]
    root: Path
    recorder: ServiceProcess | None = None
    extra: dict = field(default_factory=dict)
    replicas: list[ServiceProcess] = field(default_factory=list)  # further gateways on the same bus and store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def urls(self) -> list[str]:
        """Every gateway replica's URL, the first being :attr:`url`."""
        return [self.url, *(f"http://127.0.0.1:{r.http_port}" for r in self.replicas)]

    @property
    def clip_dir(self) -> Path:
        return self.root / "clips"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    def headers(self, key: str = "full", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key]}", **extra}


def write_keys(path: Path) -> dict[str, str]:
    """Mint the test keys, write the keys file, return name → token."""
    tokens, entries = {}, []
    for name, (scopes, rate) in KEYS.items():
        token, key = new_api_key(name, scopes, rate)
        tokens[name] = token
        entries.append(key.to_wire())
    path.write_text(json.dumps(entries))
    return tokens


@contextlib.contextmanager
def running_platform(
    root: Path, gateway_env: Mapping[str, str] | None = None, gateway_replicas: int = 1
) -> Iterator[Platform]:
    """Start nats-server, a tiny generator and ``gateway_replicas`` gateways under ``root``; stop them after."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = write_keys(root / "keys.json")
    with contextlib.ExitStack() as stack:
        nats = stack.enter_context(LocalNatsServer(root / "nats", log_path=root / "nats.log"))
        generator = stack.enter_context(
            model_server(
                "services.generator", {"MUSICRL_MODEL_URI": TINY, "MUSICRL_DURATION_S": "1"}, root, "generator"
            )
        )
        env = {
            "MUSICRL_GENERATOR_URL": generator.http_url,
            "MUSICRL_NATS_URL": nats.url,
            "MUSICRL_CLIP_STORE_URL": str(root / "clips"),
            "MUSICRL_SECRET_KEY": SECRET,
            "MUSICRL_API_KEYS_FILE": str(root / "keys.json"),
            "MUSICRL_STABLE_MODEL_URI": TINY,
            "MUSICRL_STABLE_VERSION": "v1",
            "MUSICRL_COMPARISON_DURATION_S": "0.4",  # tiny clips: the tests check plumbing, not music
            "MUSICRL_MAX_DURATION_S": "2",
            "MUSICRL_PUBLISH_DEADLINE_S": "5",
            "MUSICRL_ENVIRONMENT": "development",  # cookies without the Secure flag on plain http
            **(gateway_env or {}),
        }
        gateway, *replicas = [
            stack.enter_context(http_service("services.gateway", env, root)) for _ in range(gateway_replicas)
        ]
        yield Platform(nats=nats, generator=generator, gateway=gateway, tokens=tokens, root=root, replicas=replicas)
