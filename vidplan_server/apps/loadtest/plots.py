"""The load test's two pictures (matplotlib, Agg): the latency percentile distribution and latency over time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidplan_server.apps.loadtest.memory import MB, MemorySample
from vidplan_server.apps.loadtest.stats import LatencyRecorder, percentile_curve_ms

_PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)


@dataclass(frozen=True)
class StageTrace:
    """One run or ramp stage, for the plots."""

    robots: int
    offset_s: float  # start of the stage, seconds from the start of the load test
    recorder: LatencyRecorder


def _inverse_tail(percentile: float, count: int = 10**6) -> float:
    """The HDR plot's x: 1 / (1 - p), so 90 %, 99 % and 99.9 % are a decade apart; at most ``count`` (the tail past
    one sample in ``count`` is not resolved, and 100 % would be infinitely far)."""
    return min(1.0 / max(1.0 - percentile / 100.0, 1e-9), float(count))


def plot_percentiles(stages: list[StageTrace], budget_ms: float, path: Path) -> Path:
    """Latency (ms, log) against percentile (1 / (1 - p) scale), corrected for coordinated omission, per stage;
    with one stage the uncorrected distribution beside it; the deadline as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8, 4.5))
    widest = 10
    for stage in stages:
        count = max(stage.recorder.corrected.count, 1)
        widest = max(widest, count)
        curve = percentile_curve_ms(stage.recorder.corrected)
        if curve:
            xs = [_inverse_tail(p, count) for p, _ in curve]
            ax.plot(xs, [v for _, v in curve], drawstyle="steps-post", label=f"{stage.robots} robot(s)")
    if len(stages) == 1:
        raw = percentile_curve_ms(stages[0].recorder.raw)
        count = max(stages[0].recorder.raw.count, 1)
        if raw:
            xs = [_inverse_tail(p, count) for p, _ in raw]
            ax.plot(xs, [v for _, v in raw], "--", drawstyle="steps-post", color="grey", label="uncorrected")
    ax.axhline(budget_ms, color="red", linewidth=1, label=f"deadline {budget_ms:.0f} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [p for p in _PERCENTILE_TICKS if _inverse_tail(p) <= widest]
    ax.set_xticks([_inverse_tail(p) for p in ticks], [f"{p:g}%" for p in ticks])
    ax.set_xlim(1.0, widest)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("percentile")
    ax.set_ylabel("plan latency (ms)")
    ax.set_title("Plan latency distribution (corrected for coordinated omission)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_timeline(stages: list[StageTrace], budget_ms: float, memory: list[MemorySample], path: Path) -> Path:
    """Every request's latency against the time it was sent (plans as dots, errors as red crosses), the stages'
    robot counts, the deadline; below it the server's resident memory when it was sampled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = 2 if memory else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 4.5 if rows == 1 else 6.5), sharex=True, squeeze=False)
    ax = axes[0][0]
    errors_labelled = False
    for stage in stages:
        ok = [s for s in stage.recorder.samples if s.key == "OK"]
        bad = [s for s in stage.recorder.samples if s.key != "OK"]
        ax.scatter(
            [stage.offset_s + s.sent_s for s in ok],
            [max(s.latency_ms, 0.01) for s in ok],
            s=4,
            alpha=0.6,
            label=f"{stage.robots} robot(s)",
        )
        if bad:
            ax.scatter(
                [stage.offset_s + s.sent_s for s in bad],
                [max(s.latency_ms, 0.01) for s in bad],
                s=12,
                marker="x",
                color="red",
                label=None if errors_labelled else "error",
            )
            errors_labelled = True
        if len(stages) > 1:
            ax.axvline(stage.offset_s, color="grey", linewidth=0.6, linestyle=":")
    ax.axhline(budget_ms, color="red", linewidth=1, label=f"deadline {budget_ms:.0f} ms")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("latency (ms)")
    ax.set_title("Plan latency over time (by the time each request was sent)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", markerscale=2, ncol=2)
    if memory:
        mem = axes[1][0]
        mem.plot([s.t_s for s in memory], [s.rss_bytes / MB for s in memory], marker=".", color="black")
        mem.set_ylabel("server RSS (MB)")
        mem.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("seconds from the start of the load test")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
