"""Settings of one load test (:class:`LoadTestConfig`): what ``vidplan loadtest``'s options become."""

from __future__ import annotations

from dataclasses import dataclass

TRANSPORTS = ("grpc", "http")


class LoadTestError(ValueError):
    """A setting or an input that a load test cannot run with; the message names the option."""


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test. Times in seconds unless named ``_ms``.

    ``robots`` is the robot count of a plain run and the largest count of a ramp (``ramp``: 1, 1 + ``ramp_step``,
    ... up to ``robots``, each stage ``duration_s`` long). A robot asks for a plan whenever the open-loop horizon
    of its chunk (``open_loop_horizon`` rows at ``control_hz``) has run out, so a server that answers in time sees
    one request per robot every ``expected_interval_s``.
    """

    target: str  # host:port of the server's transport (gRPC port for "grpc", HTTP port for "http")
    data: str = ""  # dataset folder the robots replay
    transport: str = "grpc"
    robots: int = 1
    duration_s: float = 60.0  # of a plain run, or of each ramp stage
    open_loop_horizon: int = 8  # chunk rows executed before the next plan is due
    control_hz: float = 15.0
    deadline_ms: int | None = None  # per request; None: the open-loop horizon's span (8 / 15 s = 533 ms)
    ramp: bool = False
    ramp_step: int = 1  # robots added per ramp stage
    warmup_s: float = 5.0  # requests sent earlier (per run or stage) are not in the statistics
    timeout_slack_s: float = 1.0  # the transport waits this much past the deadline, so late replies are measured
    token: str | None = None
    root_cert: str | None = None  # PEM roots: TLS on both transports
    metrics_port: int | None = None  # the server's HTTP port for /metrics (default: --target's with HTTP)
    memory_every_s: float = 10.0  # resident-memory sampling period
    episodes: int | None = None  # episodes of the dataset to replay (default: one per robot, as many as there are)
    proposals: int | None = None  # PlanOptions.num_proposals (None: the server's default)
    refine_iters: int | None = None  # PlanOptions.refine_iters (None: the server's default)
    seed: int = 0
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        host, _, port = self.target.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LoadTestError(f"--target {self.target!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
        if self.transport not in TRANSPORTS:
            raise LoadTestError(f"--transport {self.transport!r}: expected one of {', '.join(TRANSPORTS)}")
        checks = (
            ("--robots", self.robots, self.robots >= 1),
            ("--duration", self.duration_s, self.duration_s > 0),
            ("--open-loop-horizon", self.open_loop_horizon, self.open_loop_horizon >= 1),
            ("--control-hz", self.control_hz, self.control_hz > 0),
            ("--ramp-step", self.ramp_step, self.ramp_step >= 1),
            ("--warmup", self.warmup_s, 0 <= self.warmup_s < self.duration_s),
            ("--memory-every", self.memory_every_s, self.memory_every_s > 0),
            ("--deadline-ms", self.deadline_ms, self.deadline_ms is None or self.deadline_ms >= 1),
            ("--episodes", self.episodes, self.episodes is None or self.episodes >= 1),
            ("--timeout-slack", self.timeout_slack_s, self.timeout_slack_s >= 0),
        )
        for option, value, ok in checks:
            if not ok:
                hint = " (must be >= 0 and shorter than --duration)" if option == "--warmup" else ""
                raise LoadTestError(f"{option} {value}: out of range{hint}")

    @property
    def host(self) -> str:
        return self.target.rpartition(":")[0]

    @property
    def dt_s(self) -> float:
        """Control period."""
        return 1.0 / self.control_hz

    @property
    def expected_interval_s(self) -> float:
        """Time between a robot's requests when the server keeps up: the open-loop horizon's span."""
        return self.open_loop_horizon / self.control_hz

    @property
    def budget_ms(self) -> float:
        """The per-request deadline (ms): ``deadline_ms``, or the open-loop horizon's span."""
        return float(self.deadline_ms) if self.deadline_ms is not None else 1000.0 * self.expected_interval_s

    @property
    def timeout_s(self) -> float:
        """How long the transport waits for one reply."""
        return self.budget_ms / 1000.0 + self.timeout_slack_s

    @property
    def memory_port(self) -> int | None:
        """Port of the server's ``/metrics`` on ``host``, or None when unknown (gRPC without ``metrics_port``)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return int(self.target.rpartition(":")[2]) if self.transport == "http" else None

    def stages(self) -> list[int]:
        """Robot counts to run: ``[robots]``, or the ramp's 1, 1 + step, ..., never past ``robots``."""
        if not self.ramp:
            return [self.robots]
        return list(range(1, self.robots + 1, self.ramp_step))
