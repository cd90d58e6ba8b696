"""``vidplan data info``: schema, counts, success rate and action statistics of a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cmd_data_info(args: argparse.Namespace) -> int:
    from vidplan_server.data.info import dataset_summary, format_summary
    from vidplan_server.data.reader import EpisodeDataset

    ds = EpisodeDataset(args.dataset)
    summary = dataset_summary(ds)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, ds.features))
    return 0


def register(groups) -> None:
    """Add ``vidplan data`` to the top-level subparsers ``groups``."""
    data = groups.add_parser("data", help="inspect datasets (VidPlan recordings or DROID ports)")
    data_cmds = data.add_subparsers(dest="command", required=True, metavar="{info}")
    info = data_cmds.add_parser(
        "info",
        help="schema, counts, success rate and action statistics",
        description="Print the schema, episode and frame counts, success rate and per-dimension action "
        "statistics of a LeRobot dataset (v3.0 or v2.x; VidPlan recordings or DROID ports).",
    )
    info.add_argument("dataset", type=Path, help="dataset folder")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_data_info)
