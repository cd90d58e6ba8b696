"""Summaries of closed-loop episodes: ``closed_loop.json``, a markdown table and a bar chart with the intervals.

Per split and agent (and per task kind inside): success rate with its Wilson 95 % interval, the paired difference
to ``policy`` on the episodes both ran (same index, same seed) with Newcombe's paired interval (``stats``),
instruction following (share of episodes whose first grasp was the instructed object) with its Wilson interval,
failure causes, steps, plans and times. JSON layout::

    {"val": {"policy": {"success": 0.8, "ci_low": ..., "ci_high": ..., "instruction_following": ...,
                        "episodes": 50, "paired_diff_to_policy": null, ..., "by_kind": {"place": {...}}},
             "vidplan": {..., "paired_diff_to_policy": 0.1, "paired_ci_low": ..., "paired_ci_high": ...}},
     "ood": {...}}

Splits are ordered val, ood; agents in ``AGENT_NAMES`` order.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from vidplan_server.evaluation.closed_loop.agents import AGENT_NAMES
from vidplan_server.evaluation.closed_loop.outcome import NO_GRASP_KINDS, no_grasp_kind
from vidplan_server.evaluation.closed_loop.stats import paired_difference, wilson_interval

BASELINE = "policy"
TASK_KINDS = ("place", "pick")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 3) if values else None


def _cause(rec: dict) -> str | None:
    cause = rec.get("failure_cause")
    return cause.split(":", 1)[0] if cause else None  # "agent_error: ValueError: ..." counts as agent_error


def cell(records: list[dict], baseline: list[dict] | None = None) -> dict:
    """Summary of one agent's episodes (``records``); ``baseline``: the policy's episodes of the same split."""
    n = len(records)
    wins = sum(bool(r["success"]) for r in records)
    followed = sum(r["first_grasp"] == "target" for r in records)
    w, f = wilson_interval(wins, n), wilson_interval(followed, n)
    out = {
        "success": round(w.estimate, 4),
        "ci_low": round(w.low, 4),
        "ci_high": round(w.high, 4),
        "successes": wins,
        "episodes": n,
        "instruction_following": round(f.estimate, 4),
        "if_ci_low": round(f.low, 4),
        "if_ci_high": round(f.high, 4),
        "wrong_object": round(sum(r["first_grasp"] == "other" for r in records) / n, 4),
        "paired_diff_to_policy": None,
        "paired_ci_low": None,
        "paired_ci_high": None,
        "paired_episodes": 0,
        "failure_causes": dict(sorted(Counter(c for r in records if (c := _cause(r))).items())),
        # no_grasp split by how close the hand came (outcome.no_grasp_kind); records of older runs have no kind
        "no_grasp_kinds": {k: n for k in NO_GRASP_KINDS if (n := sum(no_grasp_kind(r) == k for r in records))},
        "mean_steps": _mean(r["steps"] for r in records),
        "mean_plans": _mean(r["plans"] for r in records),
        "mean_plan_ms": _mean(r["mean_plan_ms"] for r in records),
        "seconds_per_episode": _mean(r["wall_s"] for r in records),
    }
    if baseline:
        by_index = {(r["index"], r["seed"]): bool(r["success"]) for r in baseline}
        pairs = [(bool(r["success"]), by_index[k]) for r in records if (k := (r["index"], r["seed"])) in by_index]
        if pairs:
            d = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
            out.update(
                paired_diff_to_policy=round(d.estimate, 4),
                paired_ci_low=round(d.low, 4),
                paired_ci_high=round(d.high, 4),
                paired_episodes=len(pairs),
            )
    return out


def _order(names) -> list[str]:
    return sorted(names, key=lambda a: (AGENT_NAMES.index(a) if a in AGENT_NAMES else len(AGENT_NAMES), a))


def summarize(records: list[dict]) -> dict:
    """``{split: {agent: cell}}`` over all ``records``, each cell with ``by_kind`` (place / pick) inside."""
    summary: dict = {}
    for split in sorted({r["split"] for r in records}, key=lambda s: ({"val": 0, "ood": 1}.get(s, 2), s)):
        in_split = [r for r in records if r["split"] == split]
        baseline = [r for r in in_split if r["agent"] == BASELINE]
        summary[split] = {}
        for agent in _order({r["agent"] for r in in_split}):
            mine = [r for r in in_split if r["agent"] == agent]
            base = baseline if agent != BASELINE else None
            entry = cell(mine, base)
            entry["by_kind"] = {
                kind: cell(
                    [r for r in mine if r["task_kind"] == kind],
                    [r for r in baseline if r["task_kind"] == kind] if base else None,
                )
                for kind in TASK_KINDS
                if any(r["task_kind"] == kind for r in mine)
            }
            summary[split][agent] = entry
    return summary


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def format_table(summary: dict) -> str:
    """Markdown table: one row per split and agent."""
    lines = [
        "| split | agent | episodes | success % [95 % CI] | Δ vs policy, points [95 % CI] (pairs) "
        "| instruction following % | place % | pick % | failures | plans | plan ms | s / episode |",
        "|---|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for split, agents in summary.items():
        for agent, c in agents.items():
            diff = "–"
            if c["paired_diff_to_policy"] is not None:
                diff = (
                    f"{100 * c['paired_diff_to_policy']:+.0f} [{100 * c['paired_ci_low']:+.0f}, "
                    f"{100 * c['paired_ci_high']:+.0f}] ({c['paired_episodes']})"
                )
            kinds = c.get("by_kind", {})
            place = f"{_pct(kinds['place']['success'])} (n={kinds['place']['episodes']})" if "place" in kinds else "–"
            pick = f"{_pct(kinds['pick']['success'])} (n={kinds['pick']['episodes']})" if "pick" in kinds else "–"
            split_no_grasp = c.get("no_grasp_kinds") or {}
            failures = (
                ", ".join(
                    f"{k} {v}"
                    + (
                        f" ({', '.join(f'{g} {n}' for g, n in split_no_grasp.items())})"
                        if k == "no_grasp" and split_no_grasp
                        else ""
                    )
                    for k, v in c["failure_causes"].items()
                )
                or "–"
            )
            ms = "–" if c["mean_plan_ms"] is None else f"{c['mean_plan_ms']:.0f}"
            sec = "–" if c["seconds_per_episode"] is None else f"{c['seconds_per_episode']:.1f}"
            lines.append(
                f"| {split} | {agent} | {c['episodes']} | {_pct(c['success'])} [{_pct(c['ci_low'])}, "
                f"{_pct(c['ci_high'])}] | {diff} | {_pct(c['instruction_following'])} | {place} | {pick} "
                f"| {failures} | {c['mean_plans']} | {ms} | {sec} |"
            )
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Bar chart: success rate per agent with its Wilson 95 % interval, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(summary)
    fig, axes = plt.subplots(
        1, max(len(splits), 1), figsize=(4.2 * max(len(splits), 1), 3.6), squeeze=False, sharey=True
    )
    colours = {
        "expert": "0.6",
        "policy": "tab:blue",
        "goal-policy": "tab:cyan",
        "vidplan": "tab:green",
        "vidplan-no-uq": "tab:orange",
        "vidplan-basis": "tab:purple",
    }
    for ax, split in zip(axes[0], splits, strict=False):
        agents = list(summary[split])
        x = np.arange(len(agents))
        rates = np.array([summary[split][a]["success"] for a in agents])
        low = rates - np.array([summary[split][a]["ci_low"] for a in agents])
        high = np.array([summary[split][a]["ci_high"] for a in agents]) - rates
        ax.bar(
            x,
            100 * rates,
            color=[colours.get(a, "tab:gray") for a in agents],
            yerr=100 * np.stack([low, high]),
            capsize=4,
        )
        ax.set_xticks(x, [f"{a}\n(n={summary[split][a]['episodes']})" for a in agents], fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_title(f"{split}: success, Wilson 95 % CI", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("success %")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(out: Path, records: list[dict]) -> dict:
    """Write ``out/closed_loop.json``, ``.md`` and ``.png`` for ``records``; return the summary."""
    summary = summarize(records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "closed_loop.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "closed_loop.md").write_text(
        "# Closed-loop benchmark\n\nSuccess with Wilson 95 % intervals; difference to `policy` on the same seeds "
        "with Newcombe's paired interval. Instruction following: the first object grasped was the instructed "
        "one.\n\n" + format_table(summary) + "\n"
    )
    if summary:
        plot(summary, out / "closed_loop.png")
    return summary
