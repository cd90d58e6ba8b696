"""The options and dispatch of ``vidplan train c3`` and ``vidplan train squbed`` (kept apart from
:mod:`vidplan_server.commands.train` so that file only names the stages; no torch at import)."""

from __future__ import annotations

import argparse
import time

from vidplan_server.argtypes import CliError, positive_int

STAGES = ("c3", "squbed")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The c3 / squbed options of ``vidplan train``."""
    parser.add_argument(
        "--method",
        choices=("fsc", "cs"),
        default="cs",
        help="c3: fsc (fixed scale: P(|latent error| <= --eps) for one eps, module c3_fsc) or cs (CS-BC: "
        "conditioned on eps drawn from [0.05, 1.5] in training, any eps in that range at inference, module "
        "c3_cs) (default cs)",
    )
    parser.add_argument(
        "--loss",
        choices=("bce", "brier"),
        default="bce",
        help="c3: the proper scoring rule it is trained with (default bce)",
    )
    parser.add_argument(
        "--eps",
        type=_positive_float,
        default=0.5,
        help="c3 --method fsc: the threshold on the absolute latent error (default 0.5, the planner's confidence eps)",
    )
    parser.add_argument(
        "--windows",
        type=positive_int,
        default=96,
        help="squbed: calibration windows its probability map is fitted on (n x m rollouts each; default 96)",
    )
    parser.add_argument(
        "--latent-prompts",
        type=positive_int,
        default=4,
        metavar="N",
        help="squbed: n executions of each chunk under actuation noise (the latent prompts), >= 2 (default 4)",
    )
    parser.add_argument(
        "--videos",
        type=positive_int,
        default=4,
        metavar="M",
        help="squbed: m rollouts (flow-map noise draws) per latent prompt, >= 2 (default 4)",
    )


def run(args: argparse.Namespace, opts):
    """Train ``args.stage`` (c3 or squbed) with the common options ``opts``; returns a TrainResult-like object."""
    if args.extra_data:
        raise CliError(f"--extra-data is not used by `train {args.stage}`")
    from vidplan_server.training import probe_stage

    if args.stage == "c3":
        return probe_stage.train_c3(opts, method=args.method, loss=args.loss, eps=args.eps, flow_steps=args.flow_steps)
    from vidplan_server.models.squbed import SqubedConfig
    from vidplan_server.training.loop import TrainResult

    try:
        cfg = SqubedConfig(latent_prompts=args.latent_prompts, videos=args.videos, flow_steps=args.flow_steps)
    except ValueError as exc:
        raise CliError(f"--latent-prompts / --videos: {exc}") from None
    start = time.perf_counter()
    figures = probe_stage.train_squbed(opts, windows=args.windows, cfg=cfg)
    return TrainResult(steps=0, seconds=time.perf_counter() - start, final_eval=figures, history=[])
