"""A rollout's evidence and decision, for a person: the CLI's ``analyse`` and the pipeline's Markdown artefact."""

import datetime
import math

from musicrl.rollout.decision import Decision, DecisionRule
from musicrl.rollout.record import RolloutRecord
from musicrl.rollout.tally import Tally


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds") if ts else "-"


def _e(log_e: float) -> str:
    return "0" if log_e == -math.inf else f"{math.exp(min(log_e, 700.0)):.4g}"


def markdown(record: RolloutRecord, tally: Tally, decision: Decision, rule: DecisionRule) -> str:
    """The rollout as a Markdown document: what is rolled out, the votes, the test, the decision."""
    o = tally.outcomes
    low, high = decision.interval
    win_rate = "-" if math.isnan(decision.win_rate) else f"{decision.win_rate:.3f}"
    lines = [
        f"# Rollout {record.id}: {record.version}",
        "",
        f"- canary: `{record.model_uri}` ({record.version}), in {100 * record.canary_share:.0f}% of comparisons",
        f"- requested by {record.requested_by} at {_when(record.requested_at)}; votes count from "
        f"{_when(record.counting_from)}",
        f"- status: **{record.status.value}**",
        "",
        "| canary wins | stable wins | ties | neither | win rate | anytime-valid interval |",
        "|---|---|---|---|---|---|",
        f"| {o['canary']} | {o['stable']} | {o['tie']} | {o['none']} | {win_rate} | [{low:.3f}, {high:.3f}] |",
        "",
        f"- E (canary preferred) = {_e(decision.log_e_promote)}; promote at 1/α = {1 / rule.alpha:.4g} "
        f"with at least {rule.min_votes} votes",
        f"- E (stable preferred) = {_e(decision.log_e_rollback)}; roll back at 1/β = {1 / rule.beta:.4g}",
        f"- guardrail failures: {record.guardrail_failures} of {rule.failure_limit} allowed"
        + (f" (now failing: {'; '.join(record.guardrails_failing)})" if record.guardrails_failing else ""),
        "",
    ]
    if record.verdict is not None:
        v = record.verdict
        lines.append(f"**Decision: {v.action}** by {v.actor} at {_when(v.decided_at)}: {v.reason}")
    else:
        lines.append(f"**The rule says now: {decision.action.value}**: {decision.reason}")
    return "\n".join(lines) + "\n"
