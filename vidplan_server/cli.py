"""`vidplan` command line: one entry point, one subcommand group per part of the product.

    vidplan sim record   --episodes N --out DIR [--seed S] [--split train|val|ood] [--resolution HxW] [--workers W]
    vidplan sim captions --out DIR --images N [--seed S] [--workers W]
    vidplan sim preview  DIR --episode K --out sheet.png
    vidplan data info    DIR [--json]
    vidplan train codec|world|flowmap --data DIR --out CKPT [--preset tiny|small|base] [--steps N] [--resume]
    vidplan eval closed-loop --split val|ood --episodes N --agent NAME --out DIR [--workers W] [--seed S] ...
    vidplan plan         --episode DIR --step K [--index I] [--ckpt DIR] [--out DIR]
    vidplan serve        [--ckpt DIR] [--grpc-port 50051] [--http-port 8000] [--device cpu|cuda] [--max-queue N] ...
    vidplan demo         [--server ADDR] [--out DIR] [--seed S] [--steps N] [--open-loop K] [--slowdown F] ...
    vidplan dashboard    --replay DIR [--host 127.0.0.1] [--port 8001]
    vidplan loadtest     --target HOST:PORT --data DIR [--transport grpc|http] [--robots R] [--duration S] [--ramp] ...

Every command checks its arguments before starting work and exits with status 2 and a message
naming the bad option or file on bad input (:class:`~vidplan_server.argtypes.CliError`).

This module only registers the subcommands; each lives in its own module:
``commands/{sim,data,train,eval,plan,loadtest}.py``, ``serving/cli_serve.py`` (``serve``), ``apps/demo/command.py``
(``demo``), ``apps/dashboard/command.py`` (``dashboard``) and ``evaluation/closed_loop/cli.py`` (``eval closed-loop``).
"""

from __future__ import annotations

import argparse
import os
import sys

from vidplan_server.argtypes import CliError


def build_parser() -> argparse.ArgumentParser:
    from vidplan_server.apps.dashboard import command as dashboard
    from vidplan_server.apps.demo import command as demo
    from vidplan_server.commands import data, eval, loadtest, plan, sim, train
    from vidplan_server.serving import cli_serve

    parser = argparse.ArgumentParser(
        prog="vidplan",
        description="VidPlan: inference-time planning with an action-conditioned video world model.",
    )
    from vidplan_server import __version__

    parser.add_argument("--version", action="version", version=f"vidplan-server {__version__}")
    groups = parser.add_subparsers(
        dest="group", required=True, metavar="{sim,data,train,eval,plan,serve,demo,dashboard,loadtest}"
    )
    for module in (sim, data, train, eval, plan):
        module.register(groups)

    srv = groups.add_parser(
        "serve",
        help="serve the planner over gRPC and HTTP (one process, one event loop)",
        description=cli_serve.DESCRIPTION,
    )
    cli_serve.add_arguments(srv)
    srv.set_defaults(func=cli_serve.run)

    dem = groups.add_parser(
        "demo",
        help="one simulated episode driven through the robot client against a server",
        description=demo.DESCRIPTION,
    )
    demo.add_arguments(dem)
    dem.set_defaults(func=demo.run)

    dash = groups.add_parser(
        "dashboard", help="the operator dashboard on a recorded run (--replay DIR)", description=dashboard.DESCRIPTION
    )
    dashboard.add_arguments(dash)
    dash.set_defaults(func=dashboard.run)
    loadtest.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vidplan_server.data.errors import DatasetError
    from vidplan_server.models.checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, DatasetError, CheckpointError) as exc:
        print(f"vidplan: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vidplan data info DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("vidplan: interrupted; committed episodes are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
