"""The server's resident memory during a load test, from its ``/metrics`` (``process_resident_memory_bytes``).

``vidplan serve`` exports the standard process metrics (``prometheus_client``'s ``ProcessCollector``, Linux only).
:func:`sample_memory` reads them every ``every_s`` seconds on the target host only (the server's HTTP port), and
:func:`memory_growth` says how much the server grew after the warm-up: the first sample at or after the end of the
warm-up against the last one, the peak, and the slope of a least-squares line through the samples after the
warm-up (MB per hour with its standard error, from 5 minutes of samples on), which a soak (``--duration 1800``)
turns into a leak figure; the allocator swings the RSS by tens of MB between samples, so the medians of the first
and the last quarter of the samples are compared too (``growth_median_mb``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from vidplan_server.apps.loadtest.clock import Clock

log = logging.getLogger(__name__)

METRIC = "process_resident_memory_bytes"
MB = 1024.0 * 1024.0
SLOPE_MIN_SPAN_S = 300.0


@dataclass(frozen=True)
class MemorySample:
    t_s: float  # seconds from the start of the load test
    rss_bytes: float


def resident_bytes(metrics_text: str) -> float | None:
    """``process_resident_memory_bytes`` from a Prometheus text exposition, or None when it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == METRIC:
                return float(sample.value)
    return None


async def sample_memory(
    url: str,
    token: str | None,
    verify,
    clock: Clock,
    start_s: float,
    stop_s: float,
    every_s: float,
    out: list[MemorySample],
    problems: list[str],
) -> None:
    """Append a sample to ``out`` every ``every_s`` from now until ``stop_s``; a failed read goes to ``problems``
    (the first few), the sampling goes on. Bounded: at most ``(stop_s - now) / every_s + 1`` reads."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, verify=verify, timeout=min(5.0, every_s)) as client:
        t = clock.now()
        while t <= stop_s:
            try:
                response = await client.get(url)
                response.raise_for_status()
                value = resident_bytes(response.text)
                if value is None:
                    raise ValueError(f"{url} does not export {METRIC}")
                out.append(MemorySample(clock.now() - start_s, value))
            except (httpx.HTTPError, ValueError) as exc:
                if len(problems) < 5:
                    problems.append(f"{type(exc).__name__}: {exc}")
            t += every_s
            await clock.sleep_until(t)


def memory_growth(samples: list[MemorySample], warmup_s: float) -> dict:
    """Growth of the resident memory after ``warmup_s`` (seconds from the start), in MB."""
    from scipy.stats import linregress

    after = [s for s in samples if s.t_s >= warmup_s]
    if len(after) < 2:
        return {"sampled": len(samples), "growth_mb": None, "reason": "fewer than two samples after the warm-up"}
    first, last = after[0], after[-1]
    span_s = last.t_s - first.t_s
    rss = np.array([s.rss_bytes for s in after]) / MB
    quarter = max(len(after) // 4, 1)
    out = {
        "sampled": len(samples),
        "after_warmup": len(after),
        "rss_start_mb": round(first.rss_bytes / MB, 1),
        "rss_end_mb": round(last.rss_bytes / MB, 1),
        "rss_peak_mb": round(float(rss.max()), 1),
        "growth_mb": round((last.rss_bytes - first.rss_bytes) / MB, 1),
        # The allocator swings the RSS by tens of MB from one sample to the next: medians of the first and the last
        # quarter of the samples say more than two single samples.
        "growth_median_mb": round(float(np.median(rss[-quarter:]) - np.median(rss[:quarter])), 1),
        "slope_mb_per_hour": None,
        "slope_stderr_mb_per_hour": None,
        "span_s": round(span_s, 1),
    }
    # A slope fitted to a few minutes of samples is the allocator's noise, not a leak: only from SLOPE_MIN_SPAN_S.
    if span_s >= SLOPE_MIN_SPAN_S:
        fit = linregress([s.t_s for s in after], rss)
        out["slope_mb_per_hour"] = round(fit.slope * 3600.0, 2)
        out["slope_stderr_mb_per_hour"] = round(fit.stderr * 3600.0, 2)
    return out
