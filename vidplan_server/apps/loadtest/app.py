"""One load test end to end: read the server's info, run the stages (one, or a ramp), sample memory, report.

:func:`run_loadtest` is what ``vidplan loadtest`` runs once its episodes are loaded. Transports and the clock are
injectable (tests pass a fake server and a virtual clock); by default every robot opens its own connection of
``config.transport`` to ``config.target``, and nothing else is contacted but that host (``/metrics`` on its HTTP
port for the memory samples).
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from vidplan_server.apps.loadtest.clock import Clock, MonotonicClock
from vidplan_server.apps.loadtest.config import LoadTestConfig, LoadTestError
from vidplan_server.apps.loadtest.driver import run_robots
from vidplan_server.apps.loadtest.memory import MB, MemorySample, memory_growth, sample_memory
from vidplan_server.apps.loadtest.plots import StageTrace, plot_percentiles, plot_timeline
from vidplan_server.apps.loadtest.ramp import judge, ramp_result
from vidplan_server.apps.loadtest.replay import EncodedEpisode, RobotSettings
from vidplan_server.apps.loadtest.report import TOP_LEVEL, summary_text, write_json
from vidplan_server.apps.loadtest.stats import LatencyRecorder
from vidplan_server.apps.loadtest.transport import PlanTransport, open_transport

INFO_TIMEOUT_S = 10.0


async def _server_info(transport: PlanTransport, config: LoadTestConfig):
    import asyncio

    try:
        return await asyncio.wait_for(transport.info(), INFO_TIMEOUT_S)
    except Exception as exc:  # any failure to read the info means the target is not a usable server
        raise LoadTestError(
            f"--target {config.target}: could not read the server's info over {config.transport} "
            f"({type(exc).__name__}: {exc}); is `vidplan serve` listening there, with this --transport and --token?"
        ) from None
    finally:
        await transport.close()


def robot_settings(config: LoadTestConfig, info, instruction: str) -> RobotSettings:
    """What every robot sends by, from the server's info as the robot client derives it (``LoopConfig.for_server``:
    the history its model sees, ``frame_stride`` steps apart) and the load test's own rate, horizon and deadline."""
    from vidplan_client import LoopConfig, plan_options

    loop = LoopConfig.for_server(
        info, instruction, dt_s=config.dt_s, open_loop_steps=config.open_loop_horizon, plan_timeout_s=config.timeout_s
    )
    options = plan_options(
        num_proposals=config.proposals,
        refine_iters=config.refine_iters,
        deadline_ms=round(config.budget_ms),
        seed=config.seed,
    )
    return RobotSettings(loop.dt_s, loop.open_loop_steps, loop.history_frames, loop.frame_stride, options)


def _progress_bar(robots: int, config: LoadTestConfig, label: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(
        total=config.duration_s,
        desc=f"{label}{robots} robot(s)",
        bar_format="{desc}: {n:.0f}/{total:.0f} s |{bar:16}|{postfix}",
        disable=not enabled,
        leave=True,
    )

    def update(elapsed_s: float, recorder: LatencyRecorder) -> None:
        p99 = recorder.p99_ms()
        bar.n = min(elapsed_s, config.duration_s)
        bar.set_postfix_str(
            f"plans {recorder.seen_plans} ({recorder.seen_plans / max(elapsed_s, 1e-9):.2f}/s), "
            f"p99 {'-' if p99 is None else f'{p99:.0f}'} ms, errors {recorder.seen_errors}",
            refresh=True,
        )

    return bar, update


async def run_loadtest(
    config: LoadTestConfig,
    episodes: Sequence[EncodedEpisode],
    out: Path | None,
    connect: Callable[[], PlanTransport] | None = None,
    clock: Clock | None = None,
    progress: bool = True,
) -> dict:
    """Run ``config`` with robots replaying ``episodes``; write ``out`` (when given) and return the report."""
    import asyncio

    if not episodes:
        raise LoadTestError(f"--data {config.data}: no episodes to replay")
    connect = connect or (lambda: open_transport(config))
    clock = clock or MonotonicClock()
    load_before = os.getloadavg()
    info = await _server_info(connect(), config)
    settings = robot_settings(config, info, episodes[0].instruction)
    run_id = uuid.uuid4().hex[:8]
    start = clock.now()

    memory: list[MemorySample] = []
    memory_problems: list[str] = []
    sampler = None
    stages = config.stages()
    if config.memory_port is not None:
        scheme = "https" if config.root_cert else "http"
        url = f"{scheme}://{config.host}:{config.memory_port}/metrics"
        longest = len(stages) * (config.duration_s + config.timeout_s + config.expected_interval_s) + 1.0
        verify = _verify(config)
        sampler = asyncio.create_task(
            sample_memory(
                url,
                config.token,
                verify,
                clock,
                start,
                start + longest,
                config.memory_every_s,
                memory,
                memory_problems,
            )
        )

    results, traces, verdicts = [], [], []
    try:
        for index, robots in enumerate(stages):
            label = f"stage {index + 1}/{len(stages)}: " if config.ramp else ""
            bar, update = _progress_bar(robots, config, label, progress)
            stage_start = clock.now()
            try:
                recorder, _ticks = await run_robots(
                    robots,
                    episodes,
                    settings,
                    connect,
                    clock,
                    config.duration_s,
                    config.warmup_s,
                    config.timeout_s,
                    config.budget_ms,
                    f"loadtest-{run_id}-s{index}",
                    on_progress=update if progress else None,
                )
            finally:
                bar.close()
            summary = recorder.summary(config.duration_s - config.warmup_s)
            verdict = judge(robots, recorder.p99_ms(), summary["errors_by_status"], config.budget_ms)
            verdicts.append(verdict)
            results.append({"robots": robots, "held": verdict.held, "reason": verdict.reason, **summary})
            traces.append(StageTrace(robots, stage_start - start, recorder))
            if config.ramp and not verdict.held:
                break
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

    report: dict = {
        "config": {k: v for k, v in asdict(config).items() if k != "token"},
        "server": {
            "model_version": info.model_version,
            "history": info.history,
            "frame_stride": info.frame_stride,
            "dt_s": info.dt_s,
        },
        "episodes": [e.name for e in episodes],
        "expected_interval_ms": round(1000.0 * config.expected_interval_s, 3),
        "history_frames": settings.history_frames,
        "stages": results,
        **{key: results[-1][key] for key in TOP_LEVEL},
        "duration_s": config.duration_s,
        "transport": config.transport,
        "target": config.target,
    }
    if config.ramp:
        report["ramp"] = ramp_result(verdicts).as_dict()
    if config.memory_port is None:
        report["memory"] = {"reason": "not sampled: give --metrics-port (the server's HTTP port) with gRPC"}
    else:
        report["memory"] = {
            **memory_growth(memory, config.warmup_s),
            "problems": memory_problems,
            "samples": [[round(m.t_s, 2), round(m.rss_bytes / MB, 2)] for m in memory],  # (s from the start, MB)
        }
        if not memory and memory_problems:
            report["memory"]["reason"] = f"not sampled: {memory_problems[0]}"
    report["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["files"] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report["files"] = {
            "json": str(out / "loadtest.json"),
            "percentiles": str(plot_percentiles(traces, config.budget_ms, out / "percentiles.png")),
            "timeline": str(plot_timeline(traces, config.budget_ms, memory, out / "timeline.png")),
        }
        write_json(report, out / "loadtest.json")
    report["summary"] = summary_text(report)
    return report


def _verify(config: LoadTestConfig):
    if not config.root_cert:
        return True
    import ssl

    return ssl.create_default_context(cafile=config.root_cert)
