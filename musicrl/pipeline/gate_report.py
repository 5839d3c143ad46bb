"""The gate's report and verdict: metrics under slash-namespaced keys, the thresholds applied, the reasons.

``gate_report.json`` is what the pipeline's next step reads (:meth:`GateReport.from_wire`); ``gate_report.md``
is what a person reads in the Kubeflow UI. Metric keys:

* ``reward/<name>/candidate_mean``, ``stable_mean``, ``diff_mean``, ``diff_ci_low``, ``diff_ci_high``,
  ``win_rate``: each reward's scores in its own units, and the paired difference candidate − stable;
* ``kl_to_stable`` (with ``/ci_low``, ``/ci_high``): KL(candidate ‖ stable), nats per token;
* ``win_rate/preference`` and ``win_rate/independent`` (with ``/ci_low``, ``/ci_high``): shares of paired clips
  the candidate wins under the preference judge and under the independent judges, ties counting half.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec

from musicrl.data.dataset import join_url
from musicrl.pipeline.gate_config import GateConfig


SCHEMA_VERSION = 1
REPORT_JSON = "gate_report.json"
REPORT_MARKDOWN = "gate_report.md"


@dataclass(frozen=True, slots=True)
class GateReport:
    """The outcome of one gate run.

    Attributes:
        candidate_uri: The candidate policy; stable_uri: the policy it was compared with.
        passed: Whether every gated threshold was met.
        reasons: One sentence per failed threshold, naming the measured value and the threshold.
        metrics: Every measurement (see the module docstring for the keys).
        thresholds: The thresholds applied, under the key of the metric each one bounds, as
            ``{"reward/<name>/diff_ci_low": min, "kl_to_stable": max, "win_rate/preference": min, ...}``.
        rewards: The rewards scored, in order.
        preference_judge: The preference judge, or None.
        independent_judges: The independent judges.
        prompts: Number of held-out prompts.
        clips_per_prompt: Paired clips per prompt.
        confidence_level: Coverage of the intervals.
    """

    candidate_uri: str
    stable_uri: str
    passed: bool
    reasons: tuple[str, ...]
    metrics: Mapping[str, float]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    rewards: tuple[str, ...] = ()
    preference_judge: str | None = None
    independent_judges: tuple[str, ...] = ()
    prompts: int = 0
    clips_per_prompt: int = 0
    confidence_level: float = 0.95

    def to_wire(self) -> dict[str, Any]:
        """The report as a JSON-able dict (``verdict`` is ``"passed"`` or ``"failed"``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": "passed" if self.passed else "failed",
            "passed": self.passed,
            "reasons": list(self.reasons),
            "metrics": dict(self.metrics),
            "thresholds": dict(self.thresholds),
            "candidate_uri": self.candidate_uri,
            "stable_uri": self.stable_uri,
            "rewards": list(self.rewards),
            "preference_judge": self.preference_judge,
            "independent_judges": list(self.independent_judges),
            "prompts": self.prompts,
            "clips_per_prompt": self.clips_per_prompt,
            "confidence_level": self.confidence_level,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "GateReport":
        """Read a report written by :meth:`to_wire`; unknown fields (a newer schema's) are ignored."""
        return cls(
            candidate_uri=str(data["candidate_uri"]),
            stable_uri=str(data["stable_uri"]),
            passed=bool(data["passed"]),
            reasons=tuple(data.get("reasons", ())),
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
            rewards=tuple(data.get("rewards", ())),
            preference_judge=data.get("preference_judge"),
            independent_judges=tuple(data.get("independent_judges", ())),
            prompts=int(data.get("prompts", 0)),
            clips_per_prompt=int(data.get("clips_per_prompt", 0)),
            confidence_level=float(data.get("confidence_level", 0.95)),
        )

    def to_markdown(self) -> str:
        """A readable summary: the verdict, one table row per reward, the KL and win rates, the reasons."""
        level = f"{self.confidence_level:.0%}"
        lines = [
            f"# Offline gate: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Candidate `{self.candidate_uri}` against stable `{self.stable_uri}` on {self.prompts} held-out "
            f"prompts × {self.clips_per_prompt} paired clips; {level} bootstrap intervals over prompts.",
            "",
            f"| reward | candidate | stable | candidate − stable ({level} CI) | win rate | gate |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in self.rewards:
            key = f"reward/{name}"
            diff = _interval(self.metrics, f"{key}/diff_mean", f"{key}/diff_ci_low", f"{key}/diff_ci_high")
            gate = self._gate_cell(f"{key}/diff_ci_low", "≥")
            lines.append(
                f"| {name} | {_num(self.metrics.get(f'{key}/candidate_mean'))} | "
                f"{_num(self.metrics.get(f'{key}/stable_mean'))} | {diff} | "
                f"{_num(self.metrics.get(f'{key}/win_rate'))} | {gate} |"
            )
        lines += ["", f"| measure | value ({level} CI) | gate |", "| --- | --- | --- |"]
        lines.append(
            f"| KL to stable, nats per token | {self._row('kl_to_stable')} | {self._gate_cell('kl_to_stable', '≤')} |"
        )
        for kind, judges in (
            ("preference", self.preference_judge),
            ("independent", ", ".join(self.independent_judges)),
        ):
            key = f"win_rate/{kind}"
            value = self._row(key) if key in self.metrics else "no judge"
            lines.append(f"| win rate, {kind} ({judges or 'none'}) | {value} | {self._gate_cell(key, '≥')} |")
        if self.reasons:
            lines += ["", "## Why it failed", ""] + [f"- {reason}" for reason in self.reasons]
        return "\n".join(lines) + "\n"

    def write(self, out_url: str) -> str:
        """Write ``gate_report.json`` and ``gate_report.md`` under ``out_url`` (a path or fsspec URL).

        Returns:
            The URL of ``gate_report.json``.
        """
        fs, root = fsspec.core.url_to_fs(out_url)
        fs.makedirs(root, exist_ok=True)
        with fs.open(join_url(root, REPORT_MARKDOWN), "w") as f:
            f.write(self.to_markdown())
        # the JSON last: a reader that finds it finds the markdown too
        with fs.open(join_url(root, REPORT_JSON), "w") as f:
            f.write(json.dumps(self.to_wire(), indent=2, sort_keys=True) + "\n")
        return join_url(out_url, REPORT_JSON)

    def _row(self, key: str) -> str:
        return _interval(self.metrics, key, f"{key}/ci_low", f"{key}/ci_high")

    def _gate_cell(self, key: str, sign: str) -> str:
        if key not in self.thresholds:
            return "not gated"
        failed = any(reason.startswith(key + ":") for reason in self.reasons)
        return f"{'**fail**' if failed else 'pass'} ({sign} {_num(self.thresholds[key])})"


def thresholds_applied(config: GateConfig, metrics: Mapping[str, float]) -> dict[str, float]:
    """The gated thresholds of ``config``, under the key of the metric each bounds (absent metrics skipped)."""
    applied: dict[str, float] = {}
    for name in config.reward_names():
        minimum = config.min_diff(name)
        if minimum is not None:
            applied[f"reward/{name}/diff_ci_low"] = minimum
    gates = config.thresholds
    candidates = {
        "kl_to_stable": gates.max_kl_to_stable,
        "win_rate/preference": gates.min_win_rate_preference,
        "win_rate/independent": gates.min_win_rate_independent,
    }
    applied.update({k: v for k, v in candidates.items() if v is not None and k in metrics})
    return applied


def failures(metrics: Mapping[str, float], thresholds: Mapping[str, float], confidence_level: float) -> list[str]:
    """One sentence per threshold the metrics miss; each starts with the metric's key and a colon.

    Args:
        metrics: The measurements.
        thresholds: From :func:`thresholds_applied`.
        confidence_level: Of the intervals, for the sentences.
    """
    level = f"{confidence_level:.0%}"
    reasons = []
    for key, bound in thresholds.items():
        value = metrics[key]
        if key == "kl_to_stable":
            if not value <= bound:  # written so that a NaN fails too
                reasons.append(f"{key}: the KL to the stable policy is {value:.4g} nats per token, above {bound:.4g}")
        elif not value >= bound:
            if key.startswith("reward/"):
                name = key.split("/")[1]
                reasons.append(
                    f"{key}: the lower {level} bound of the mean {name} difference (candidate − stable) is "
                    f"{value:.4g}, below the minimum {bound:.4g}"
                )
            else:
                kind = key.split("/")[1]
                reasons.append(
                    f"{key}: the win rate under the {kind} judge is {value:.4g}, below the minimum {bound:.4g}"
                )
    return reasons


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4g}"


def _interval(metrics: Mapping[str, float], mean: str, low: str, high: str) -> str:
    if mean not in metrics:
        return "–"
    return f"{_num(metrics[mean])} [{_num(metrics.get(low))}, {_num(metrics.get(high))}]"
