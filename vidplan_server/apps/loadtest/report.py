"""``loadtest.json`` and the one-screen summary.

``loadtest.json`` holds the settings (the token left out), the server's model version, one entry per stage under
``stages`` (``robots``, ``held``, ``reason``, ``requests``, ``plans``, ``plans_per_s``, ``latency_ms`` with ``p50``,
``p90``, ``p99``, ``p99.9``, ``max``, ``mean``, ``count`` -- coordinated-omission corrected --,
``latency_ms_uncorrected``, ``deadline_miss_rate``, ``errors_by_status``, ``server_stage_ms``, ...), the figures of
the last stage repeated at the top level (a plain run has one stage), ``ramp`` (``max_robots_held``,
``stopped_at``, ``reason``) with ``--ramp``, ``memory`` and the machine's load average before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TOP_LEVEL = (
    "robots",
    "requests",
    "plans",
    "plans_per_s",
    "requests_per_s",
    "latency_ms",
    "latency_ms_uncorrected",
    "deadline_ms",
    "deadline_miss_rate",
    "planner_deadline_hit_rate",
    "errors_by_status",
    "error_rate",
    "server_stage_ms",
)


def write_json(report: dict, path: Path) -> Path:
    """Write ``report`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(errors.items(), key=lambda kv: -kv[1])) or "none"


def summary_text(report: dict) -> str:
    """The one-screen summary printed at the end."""
    cfg = report["config"]
    lines = [
        f"vidplan loadtest: {cfg['transport']} to {cfg['target']}, re-plan every {cfg['open_loop_horizon']} steps "
        f"at {cfg['control_hz']:g} Hz ({report['expected_interval_ms']:.0f} ms), deadline {report['deadline_ms']:.0f}"
        f" ms, {cfg['duration_s']:g} s per run ({cfg['warmup_s']:g} s warm-up not counted); model "
        f"{report.get('server', {}).get('model_version', '?')}"
    ]
    stages = report["stages"]
    if len(stages) > 1 or report.get("ramp"):
        lines.append(
            f"  {'robots':>6} {'plans/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'max':>7} {'misses':>8}  errors"
            "  (percentiles corrected for coordinated omission)"
        )
        for s in stages:
            lat = s["latency_ms"]
            lines.append(
                f"  {s['robots']:>6} {s['plans_per_s']:>8.2f} {_ms(lat['p50']):>7} {_ms(lat['p99']):>7} "
                f"{_ms(lat['p99.9']):>7} {_ms(lat['max']):>7} {_pct(s['deadline_miss_rate']):>8}  "
                f"{_errors(s['errors_by_status'])}{'' if s['held'] else '   <- did not hold'}"
            )
    last = stages[-1]
    lat, raw = last["latency_ms"], last["latency_ms_uncorrected"]
    lines += [
        f"  {'last stage' if len(stages) > 1 else 'robots'}: {last['robots']} robot(s); plans {last['plans']} "
        f"({last['plans_per_s']:.2f}/s) of {last['requests']} requests ({last['requests_per_s']:.2f}/s)",
        f"  latency ms, corrected for coordinated omission: p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 "
        f"{_ms(lat['p99'])}  p99.9 {_ms(lat['p99.9'])}  max {_ms(lat['max'])}; as measured: p50 {_ms(raw['p50'])}  "
        f"p99 {_ms(raw['p99'])}",
        f"  no plan within the deadline: {last['deadline_misses']} requests ({_pct(last['deadline_miss_rate'])}; "
        f"{last['deadline_exceeded']} of them DEADLINE_EXCEEDED); the planner cut its refinement in "
        f"{_pct(last['planner_deadline_hit_rate'])} of the plans; replies {last['replies_used'] or '-'}",
        f"  errors: {_errors(last['errors_by_status'])}",
    ]
    stage_ms = last["server_stage_ms"]
    if stage_ms:
        shown = [k for k in ("decode", "queue", "plan", "total") if k in stage_ms]
        planner = [k for k in stage_ms if k.startswith("planner_") and k != "planner_total" and stage_ms[k]["mean"]]
        shown += sorted(planner, key=lambda k: -stage_ms[k]["mean"])[:4]  # where the plan's time went
        lines.append(
            "  server stage means ms: " + "  ".join(f"{k} {stage_ms[k]['mean']:.0f}" for k in shown if stage_ms[k])
        )
    ramp = report.get("ramp")
    if ramp:
        held = ramp["max_robots_held"]
        lines.append(
            f"  ramp: the largest robot count that held is {held if held is not None else 'none'}"
            + (f"; stopped at {ramp['stopped_at']}: {ramp['reason']}" if ramp["stopped_at"] is not None else "")
        )
    memory = report.get("memory", {})
    if memory.get("growth_mb") is not None:
        lines.append(
            f"  server RSS after the warm-up: {memory['rss_start_mb']:.0f} -> {memory['rss_end_mb']:.0f} MB "
            f"({memory['growth_mb']:+.1f} MB over {memory['span_s']:.0f} s; medians of the first and last quarter "
            f"{memory['growth_median_mb']:+.1f} MB"
            + (
                ""
                if memory["slope_mb_per_hour"] is None
                else f"; slope {memory['slope_mb_per_hour']:+.1f} ± {memory['slope_stderr_mb_per_hour']:.1f} MB/h"
            )
            + f"; peak {memory['rss_peak_mb']:.0f} MB)"
        )
    elif memory.get("reason"):
        lines.append(f"  server memory: {memory['reason']}")
    load = report.get("load_average", {})
    if load:
        lines.append(f"  load average (1 min) before / after: {load['before'][0]:.1f} / {load['after'][0]:.1f}")
    lines.append(f"  wrote {', '.join(report['files'].values())}")
    return "\n".join(lines)
