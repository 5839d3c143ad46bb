"""The closed loop on one machine: listeners vote, the pipeline retrains, the canary wins or loses, again.

Everything goes through the platform's own interfaces: the local stack ``musicrl up`` starts (nats-server,
generator, recorder, gateway, rollout controller), the REST API for the listeners, the Parquet dataset the
recorder writes, the retraining pipeline under ``kfp.local`` (whose last step asks the controller for the
canary), and the controller's own decision. The loop only waits, counts and reports.
"""

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from musicrl.config import BusConfig
from musicrl.data.dataset import read_kind
from musicrl.demo.config import DemoConfig
from musicrl.demo.listeners import RestPanel
from musicrl.demo.measure import TasteMeasurement, measure_stable
from musicrl.errors import MusicRLError
from musicrl.gateway.auth import Scope, new_api_key
from musicrl.gateway.keys_file import add_key
from musicrl.local import LocalPlatform, LocalPlatformConfig, ensure_admin_key
from musicrl.rollout import levers
from musicrl.rollout.record import RolloutRecord, Status
from musicrl.sim.listener import ListenerConfig
from musicrl.sim.tastes import taste_by_name
from musicrl.toyworld.corpus import captions
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

DATASET_TIMEOUT_S = 120.0  # the recorder writes a batch every ~2 s; a minute means it is not recording
ROLLOUT_START_TIMEOUT_S = 300.0  # the controller starts the canary as a process that loads the checkpoint
LISTENER_KEY_ID = "demo-listeners"
LISTENER_RATE = 100_000  # requests per minute: the panel is many listeners behind one client key


@dataclass(slots=True)
class RoundResult:
    """What one round did and measured.

    Attributes:
        round: 1, 2, ...
        stable_before: The stable policy's hidden-taste scores when the round started.
        stable_after: The same, when it ended (after a promotion: the new stable policy).
        comparisons: Stable-vs-stable comparisons judged.
        comparison_ids: Their ids, in the order judged.
        votes: Their choices, ``a``/``b``/``tie`` → count.
        ratings: Ratings given.
        preferences_recorded: Preference events in the dataset after the round's collection.
        run_dir: The pipeline run's artefacts (reward models, RL run, gate report), if it trained.
        rollout: The rollout the pipeline requested (None: the run stopped before a canary).
        canary_votes: In the order cast, whether each stable-vs-canary vote named the canary (1), the stable
            policy (0), or neither (NaN: a tie).
        pipeline_s: Seconds the pipeline took.
        seconds: Seconds the round took.
    """

    round: int
    stable_before: TasteMeasurement
    stable_after: TasteMeasurement | None = None
    comparisons: int = 0
    comparison_ids: list[str] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)
    ratings: int = 0
    preferences_recorded: int = 0
    run_dir: Path | None = None
    rollout: RolloutRecord | None = None
    canary_votes: list[float] = field(default_factory=list)
    pipeline_s: float = 0.0
    seconds: float = 0.0

    @property
    def promoted(self) -> bool:
        return self.rollout is not None and self.rollout.status is Status.PROMOTED


@dataclass(slots=True)
class DemoRun:
    """Every round, and where the demo's files are."""

    config: DemoConfig
    out_dir: Path
    scale: float = float("nan")  # the taste spread the listeners voted in
    rounds: list[RoundResult] = field(default_factory=list)


def listener_prompts(config: DemoConfig, count: int) -> list[str]:
    """Captions the listeners ask for: the toy world's training split (what RL trains on)."""
    return list(captions(config.seed, count, split="train"))


def platform_config(config: DemoConfig, state_dir: Path) -> LocalPlatformConfig:
    return LocalPlatformConfig(
        model_uri=config.policy_uri,
        state_dir=str(state_dir),
        gateway_port=config.port("gateway_port"),
        generator_http_port=config.port("generator_http_port"),
        generator_grpc_port=config.port("generator_grpc_port"),
        nats_port=config.port("nats_port"),
        recorder_metrics_port=config.port("recorder_metrics_port"),
        rollout_metrics_port=config.port("rollout_metrics_port"),
    )


def service_env(config: DemoConfig) -> dict[str, dict[str, str]]:
    """What the demo sets beyond ``musicrl up``'s defaults: clip length, and a controller sized for the demo."""
    one_thread = {"MUSICRL_TORCH_THREADS": "1"}  # stable and canary generators share 2 cores with the pipeline
    return {
        "generator": one_thread,
        "gateway": {
            "MUSICRL_COMPARISON_DURATION_S": str(config.clip_duration_s),
            "MUSICRL_STABLE_VERSION": "v0",
        },
        "rollout": {
            "MUSICRL_MIN_VOTES": str(config.min_votes),
            "MUSICRL_MAX_VOTES": str(config.max_votes),
            "MUSICRL_ALPHA": str(config.alpha),
            "MUSICRL_WARMUP_S": "0",  # the canary is warmed up by the controller's own readiness wait
            "MUSICRL_CHECK_INTERVAL_S": "1",
            "MUSICRL_CANARY_FIRST_PORT": str(config.port("canary_first_port")),
            # here both generators share one machine's cores: a latency ratio measures the machine, not the canary
            "MUSICRL_MAX_LATENCY_RATIO": "4",
            **one_thread,  # the controller's environment is the canary generator's
        },
    }


def run_demo(config: DemoConfig, progress: Callable[[str], None] = logger.info) -> DemoRun:
    """Run ``config.rounds`` rounds of the loop and return what they measured (the report is written apart)."""
    from musicrl.demo.pipeline_run import run_retraining

    out = Path(config.out_dir).resolve()
    _clear_last_run(out)
    state = out / "state"
    state.mkdir(parents=True)
    token = _listener_key(state)
    taste = taste_by_name(config.taste)
    listener = ListenerConfig(temperature=config.listener_temperature, inattentive_share=config.inattentive_share)
    prompts = listener_prompts(config, max(config.comparisons, config.canary_comparisons))
    # the toy world's test split: captions no training run saw
    measured_on = list(captions(config.seed, max(config.measure_prompts, config.gate_prompts), split="test"))
    gated_on, measured_on = measured_on[: config.gate_prompts], measured_on[: config.measure_prompts]
    run = DemoRun(config=config, out_dir=out)
    progress(f"starting the platform under {state} (logs in {state / 'logs'})")
    with LocalPlatform(platform_config(config, state), service_env(config)) as platform:
        panel = RestPanel(platform.gateway_url, token, taste, listener, config.rating_share, config.seed)
        admin = RestPanel(platform.gateway_url, platform.admin_token, taste, listener)
        stable = _measure(panel, admin, measured_on, config, progress)
        for number in range(1, config.rounds + 1):
            started = time.monotonic()
            result = RoundResult(round=number, stable_before=stable)
            run.rounds.append(result)
            progress(f"round {number}: {config.comparisons} comparisons of {stable.version} ({stable.model_uri})")
            judged = _judge(panel, prompts, config.comparisons, config.concurrency, f"round {number}: listening")
            result.comparison_ids = [comparison for comparison, _ in judged]
            result.comparisons = len(judged)
            if number == 1:
                run.scale = panel.freeze_scale()
            expected = _preferences_so_far(run)
            result.preferences_recorded = _wait_for_dataset(state / "dataset", expected)
            pipeline_started = time.monotonic()
            result.run_dir = run_retraining(config, out, number, stable.model_uri, platform.nats.url, gated_on)
            result.pipeline_s = time.monotonic() - pipeline_started
            result.rollout = _requested_rollout(platform.nats.url)
            if result.rollout is not None:
                result.canary_votes, result.rollout = _judge_canary(panel, prompts, config, platform, result.rollout)
            stable = _measure(panel, admin, measured_on, config, progress)
            result.stable_after = stable
            result.votes = dict(panel.tally.votes)
            result.ratings = panel.tally.ratings
            result.seconds = time.monotonic() - started
            progress(
                f"round {number}: {_decision(result)}; hidden-taste mean of the stable policy "
                f"{result.stable_before.mean:.4f} → {stable.mean:.4f}"
            )
    return run


DEMO_OUTPUTS = ("state", "artifacts", "kfp-root", "report.txt", "report.json", "report.html", "loop.png")


def _clear_last_run(out: Path) -> None:
    """Remove what an earlier demo wrote under ``out`` (and nothing else): each run starts from an empty platform."""
    for path in [*(out / name for name in DEMO_OUTPUTS), *out.glob("round-*")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _decision(result: RoundResult) -> str:
    if result.rollout is None:
        return "no canary (the run stopped before one: see its gate report)"
    return f"canary {result.rollout.version} {result.rollout.status.value}"


def _listener_key(state: Path) -> str:
    """A client key for the panel, added to the keys file the gateway reads (as an operator would mint one)."""
    keys_file = ensure_admin_key(state)
    token, key = new_api_key(LISTENER_KEY_ID, [Scope.GENERATE, Scope.FEEDBACK, Scope.RATE], LISTENER_RATE)
    add_key(keys_file, key)
    return token


def _measure(
    panel: RestPanel, admin: RestPanel, prompts: list[str], config: DemoConfig, progress: Callable[[str], None]
) -> TasteMeasurement:
    routing = admin.get_json("/v1/admin/routing")
    progress(f"measuring the stable policy {routing['stable']['version']} on {len(prompts)} held-out prompts")
    return measure_stable(panel, prompts, config.measure_clips, config.clip_duration_s, routing, seed=config.seed)


def _judge(panel: RestPanel, prompts: list[str], count: int, concurrency: int, what: str) -> list[tuple[str, str]]:
    """``count`` comparisons, ``concurrency`` at a time; their (id, choice) in the order asked."""
    judged = []
    with ThreadPoolExecutor(concurrency) as pool, tqdm(total=count, desc=what, unit="comparison") as bar:
        for outcome in pool.map(panel.judge, (prompts[i % len(prompts)] for i in range(count))):
            judged.append(outcome)
            bar.update()
    return judged


def _preferences_so_far(run: DemoRun) -> int:
    return sum(r.comparisons for r in run.rounds) + sum(len(r.canary_votes) for r in run.rounds)


def _wait_for_dataset(dataset: Path, expected: int) -> int:
    """Wait until the recorder has written ``expected`` preference events; returns how many it has."""
    deadline = time.monotonic() + DATASET_TIMEOUT_S
    while True:
        recorded = len(
            set(read_kind(str(dataset), events_pb2.PreferenceSubmitted, ["event_id"])["event_id"].to_pylist())
        )
        if recorded >= expected:
            return recorded
        if time.monotonic() > deadline:
            raise MusicRLError(
                f"the recorder wrote {recorded} of {expected} preferences in {DATASET_TIMEOUT_S:.0f} s; see its log"
            )
        time.sleep(1.0)


def _current_rollout(nats_url: str) -> RolloutRecord | None:
    async def read() -> RolloutRecord | None:
        async with levers.open_bus(BusConfig(nats_url=nats_url), name="demo") as bus:
            record, _ = await bus.store.get()
            return record

    return asyncio.run(read())


def _requested_rollout(nats_url: str) -> RolloutRecord | None:
    """The rollout the pipeline run just requested, if it requested one."""
    record = _current_rollout(nats_url)
    if record is None or record.status.finished:
        return None  # the run stopped early, or the last rollout is an earlier round's
    return record


def _judge_canary(
    panel: RestPanel, prompts: list[str], config: DemoConfig, platform: LocalPlatform, record: RolloutRecord
) -> tuple[list[float], RolloutRecord]:
    """Listeners judge stable-vs-canary comparisons until the controller decides (or the budget ends)."""
    nats_url = platform.nats.url
    deadline = time.monotonic() + ROLLOUT_START_TIMEOUT_S
    while record.status in (Status.REQUESTED, Status.STARTING):
        if time.monotonic() > deadline:
            raise MusicRLError(f"rollout {record.id} was not running after {ROLLOUT_START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
        record = _current_rollout(nats_url) or record
    choices: list[tuple[str, str]] = []  # (comparison id, choice) in the order cast
    bar = tqdm(total=config.canary_comparisons, desc=f"canary {record.version}: listening", unit="comparison")
    with ThreadPoolExecutor(config.concurrency) as pool, bar:
        n = 0
        while n < config.canary_comparisons and not record.status.finished:
            batch = [
                prompts[(n + i) % len(prompts)] for i in range(min(config.concurrency, config.canary_comparisons - n))
            ]
            for outcome in pool.map(panel.judge, batch):
                choices.append(outcome)
                bar.update()
            n += len(batch)
            record = _current_rollout(nats_url) or record
    deadline = time.monotonic() + 30.0
    while not record.status.finished and time.monotonic() < deadline:  # the controller's last check
        time.sleep(0.5)
        record = _current_rollout(nats_url) or record
    return _canary_sequence(platform, choices), record


def _canary_sequence(platform: LocalPlatform, choices: list[tuple[str, str]]) -> list[float]:
    """Whether each vote named the canary, read from the recorded comparisons (the listeners never knew)."""
    dataset = str(platform.state / "dataset")
    deadline = time.monotonic() + DATASET_TIMEOUT_S
    wanted = {comparison for comparison, _ in choices}
    while True:
        served = read_kind(dataset, events_pb2.ComparisonServed, ["comparison_id", "canary_slot"]).to_pylist()
        slots = {row["comparison_id"]: row["canary_slot"] for row in served if row["comparison_id"] in wanted}
        if len(slots) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    sequence = []
    for comparison, choice in choices:
        slot = slots.get(comparison)  # "a", "b", or "none" (no canary in that comparison)
        if slot not in ("a", "b") or choice not in ("a", "b"):
            sequence.append(float("nan"))
        else:
            sequence.append(1.0 if choice == slot else 0.0)
    return sequence


def taste_difference(run: DemoRun) -> tuple[float, float, float]:
    """The last stable policy's hidden-taste mean minus round 1's starting one, with its interval."""
    from musicrl.demo.measure import difference_interval

    last = run.rounds[-1].stable_after
    assert last is not None
    return difference_interval(run.rounds[0].stable_before, last, seed=run.config.seed)


def canary_win_rate(votes: list[float]) -> float:
    decisive = [v for v in votes if not np.isnan(v)]
    return float(np.mean(decisive)) if decisive else float("nan")
