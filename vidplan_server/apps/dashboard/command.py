"""``vidplan dashboard``: its options and its handler (``vidplan_server/cli.py`` only registers the subparser)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
from pathlib import Path

from vidplan_server.argtypes import CliError, port

DESCRIPTION = (
    "Show a recorded run in the operator dashboard, without a live server: --replay DIR (a folder with "
    "planlog.jsonl, or the .jsonl file itself), as `vidplan serve --dashboard-record FILE` writes it. Serves the "
    "page on --host:--port (default 127.0.0.1:8001) until Ctrl-C; open http://HOST:PORT/dashboard and scrub "
    "through time with the slider, step plan by plan with the arrows, or play. The live dashboard of a running "
    "server is at http://HOST:HTTP_PORT/dashboard of `vidplan serve` itself."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replay",
        type=Path,
        required=True,
        metavar="DIR",
        help="plan log to show: a folder with planlog.jsonl, or the .jsonl file",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8001, help="HTTP port; 0 picks a free one (default 8001)")


class ReplayServer:
    """The replay app on uvicorn, in a thread of its own; port 0 picks a free one (read :attr:`url`)."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        from vidplan_server.serving.dashboard.routes import replay_app

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(replay_app(log_path), log_level=log_level, access_log=False, lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in this thread until Ctrl-C."""
        asyncio.run(self.server.serve(sockets=[self._socket]))

    def start(self, timeout_s: float = 30.0) -> ReplayServer:
        """Serve in a background thread; returns once the server accepts connections."""
        self.server.config.install_signal_handlers = False
        self._thread = threading.Thread(target=self.run, name="vidplan-replay", daemon=True)
        self._thread.start()
        for _ in range(int(timeout_s / 0.01)):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("the replay server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def run(args: argparse.Namespace) -> int:
    from vidplan_server.serving.dashboard.planlog import find_log, read_events

    try:
        log_path = find_log(args.replay)
        plans = sum(1 for event in read_events(log_path) if event.get("type") == "plan")
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"--replay: {exc}") from None
    try:
        server = ReplayServer(log_path, args.host, args.port, log_level="warning")
    except OSError as exc:
        raise CliError(f"--host {args.host} --port {args.port}: cannot listen ({exc.strerror or exc})") from None
    print(
        f"vidplan dashboard: replaying {log_path} ({plans} plans) at {server.url}/dashboard (Ctrl-C to stop)",
        file=sys.stderr,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0
