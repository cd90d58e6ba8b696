"""``vidplan demo`` as a job: reach or start the server, run the episode, stop the server, write the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from vidplan_server.apps.demo.episode import run_episode
from vidplan_server.serving.local import LocalServer, LocalServerError, connect

DemoError = LocalServerError  # the demo cannot run; the message names the option or the part that failed


def run_demo(args: argparse.Namespace) -> dict:
    """Start or reach the server, run the episode, stop the server; returns the report (also written)."""
    if args.server is not None and (args.ckpt is not None or args.device is not None):
        raise DemoError("--ckpt and --device configure the server the demo starts itself; not with --server")
    if args.ckpt is not None and not args.ckpt.is_dir():
        raise DemoError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"--out {out}: cannot create the folder ({exc})") from None
    token = args.token if args.token is not None else (os.environ.get("VIDPLAN_TOKEN") or None)
    wall_start = time.monotonic()
    server = None
    with contextlib.ExitStack() as stack:  # the server stops on every way out, Ctrl-C included
        if args.server is None:
            (out / "planlog.jsonl").unlink(missing_ok=True)  # this run's dashboard events only
            server = stack.enter_context(
                LocalServer(
                    out / "server.log",
                    args.ckpt,
                    args.device,
                    token,
                    args.startup_timeout,
                    dashboard_record=out / "planlog.jsonl",
                )
            )
            print(
                f"vidplan demo: started vidplan serve at {server.target} (pid {server.proc.pid}, "
                f"log {out / 'server.log'})",
                file=sys.stderr,
            )
        target = args.server or server.target
        client, info = connect(target, token, started_here=server is not None)
        with client:
            report = run_episode(client, info, args, out)
    report.update(
        server=target,
        server_started_here=server is not None,
        server_pid=server.proc.pid if server is not None else None,
        server_exit_code=server.exit_code if server is not None else None,
        total_wall_time_s=round(time.monotonic() - wall_start, 3),
    )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
