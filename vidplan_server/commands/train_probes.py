"""The options and dispatch of ``vidplan train c3`` and ``vidplan train squbed`` (kept apart from
:mod:`vidplan_server.commands.train` so that file only names the stages; no torch at import)."""

from __future__ import annotations

import argparse
import time

from vidplan_server.argtypes import CliError, positive_int

STAGES = ("c3", "squbed")
#: The options only these stages take, by stage, with their defaults. They are added with default None ("not
#: given"), so that :func:`check_options` can refuse one given to another stage; :func:`run` fills the defaults.
OPTIONS = {
    "c3": {"method": "cs", "loss": "bce", "eps": 0.5},
    "squbed": {"windows": 96, "latent_prompts": 4, "videos": 4},
}


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
        default=None,
        help="c3: fsc (fixed scale: P(|latent error| <= --eps) for one eps, module c3_fsc) or cs (CS-BC: "
        "conditioned on eps drawn from [0.05, 1.5] in training, any eps in that range at inference, module "
        f"c3_cs) (default {OPTIONS['c3']['method']})",
    )
    parser.add_argument(
        "--loss",
        choices=("bce", "brier"),
        default=None,
        help=f"c3: the proper scoring rule it is trained with (default {OPTIONS['c3']['loss']})",
    )
    parser.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        help="c3 --method fsc: the threshold on the absolute latent error "
        f"(default {OPTIONS['c3']['eps']}, the planner's confidence eps)",
    )
    parser.add_argument(
        "--windows",
        type=positive_int,
        default=None,
        help="squbed: calibration windows its probability map is fitted on (n x m rollouts each; "
        f"default {OPTIONS['squbed']['windows']})",
    )
    parser.add_argument(
        "--latent-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="squbed: n executions of each chunk under actuation noise (the latent prompts), >= 2 "
        f"(default {OPTIONS['squbed']['latent_prompts']})",
    )
    parser.add_argument(
        "--videos",
        type=positive_int,
        default=None,
        metavar="M",
        help="squbed: m rollouts (flow-map noise draws) per latent prompt, >= 2 "
        f"(default {OPTIONS['squbed']['videos']})",
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(args: argparse.Namespace) -> None:
    """Refuse a c3 / squbed option given to a stage that does not take it (CliError names the option and its
    stage), and ``--eps`` with ``--method cs`` (CS-BC draws its thresholds from a range)."""
    for stage, options in OPTIONS.items():
        given = [name for name in options if getattr(args, name, None) is not None]
        if given and args.stage != stage:
            shown = ", ".join(_flag(name) for name in given)
            raise CliError(f"{shown}: only for `train {stage}`, not `train {args.stage}`")
    if args.stage == "c3" and args.eps is not None and args.method != "fsc":
        raise CliError("--eps is only for `train c3 --method fsc` (CS-BC learns every eps in [0.05, 1.5])")


def run(args: argparse.Namespace, opts):
    """Train ``args.stage`` (c3 or squbed) with the common options ``opts``; returns a TrainResult-like object."""
    if args.extra_data:
        raise CliError(f"--extra-data is not used by `train {args.stage}`")
    from vidplan_server.training import probe_stage

    given = {name: getattr(args, name) for name in OPTIONS[args.stage]}
    o = {name: default if given[name] is None else given[name] for name, default in OPTIONS[args.stage].items()}
    if args.stage == "c3":
        return probe_stage.train_c3(opts, method=o["method"], loss=o["loss"], eps=o["eps"], flow_steps=args.flow_steps)
    from vidplan_server.models.squbed import SqubedConfig
    from vidplan_server.training.loop import TrainResult

    try:
        cfg = SqubedConfig(latent_prompts=o["latent_prompts"], videos=o["videos"], flow_steps=args.flow_steps)
    except ValueError as exc:
        raise CliError(f"--latent-prompts / --videos: {exc}") from None
    start = time.perf_counter()
    figures = probe_stage.train_squbed(opts, windows=o["windows"], cfg=cfg)
    return TrainResult(steps=0, seconds=time.perf_counter() - start, final_eval=figures, history=[])
