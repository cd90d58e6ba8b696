"""``vidplan eval ...``: calibration, reward, planning signal; ``closed-loop`` is registered from
:mod:`vidplan_server.evaluation.closed_loop.cli`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidplan_server.argtypes import CliError, check_device, positive_int


def _load_for_eval(args: argparse.Namespace):
    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.models.world_model import WorldModel

    for name in ("data", "ood"):
        path = getattr(args, name, None)
        if path is not None and not path.is_dir():
            raise CliError(f"--{name} {path}: dataset folder does not exist")
    ckpt = args.ckpt or DEFAULT_CHECKPOINT
    device = check_device(args.device) or "cpu"
    return ckpt, WorldModel.load(ckpt, device=device)


def _cmd_eval_calibration(args: argparse.Namespace) -> int:
    from vidplan_server.evaluation.heads_quality import CalibrationConfig, format_calibration, run_calibration
    from vidplan_server.models.heads import load_uq_head
    from vidplan_server.models.heatmaps import load_colormap

    try:
        from vidplan_server.evaluation.uq_compare import parse_methods

        methods = parse_methods(args.methods)
    except ValueError as exc:
        raise CliError(f"--methods {args.methods}: {exc}") from None
    ckpt, model = _load_for_eval(args)
    colormap = load_colormap(ckpt, model.codec)
    splits = {"val": args.data, **({"ood": args.ood} if args.ood else {})}
    if methods != ("bins",):
        return _compare(args, ckpt, model, methods, splits, colormap)
    uq = load_uq_head(ckpt).to(model.device)
    cfg = CalibrationConfig(windows=args.windows, seed=args.seed)
    result = run_calibration(model, uq, splits, args.out, cfg, progress=not args.quiet, colormap=colormap)
    print(format_calibration(result))
    print(f"wrote {args.out / 'calibration.json'}")
    return 0


def _compare(args, ckpt, model, methods, splits, colormap) -> int:
    from vidplan_server.evaluation.uq_compare import CompareConfig, load_methods, run_compare
    from vidplan_server.models.checkpoint import CheckpointError

    try:
        loaded = load_methods(ckpt, methods, model.device)
    except CheckpointError as exc:
        raise CliError(f"--methods: {exc}") from None
    cfg = CompareConfig(windows=args.windows, seed=args.seed)
    result = run_compare(model, loaded, splits, args.out, cfg, progress=not args.quiet, colormap=colormap)
    print((args.out / "uq_compare.md").read_text(), end="")
    print(f"wrote {args.out / 'uq_compare.json'}, uq_compare.md and reliability_all.png")
    return 0 if result else 1


def _cmd_eval_reward(args: argparse.Namespace) -> int:
    from vidplan_server.evaluation.heads_quality import format_reward, run_reward_eval
    from vidplan_server.models.heads import load_value_head
    from vidplan_server.models.semantic import load_semantic

    ckpt, model = _load_for_eval(args)
    value = load_value_head(ckpt).to(model.device)
    semantic = load_semantic(ckpt, args.clip, device=model.device)
    result = run_reward_eval(model, value, semantic, args.data, args.out, progress=not args.quiet)
    print(format_reward(result))
    print(f"wrote {args.out / 'reward.json'}")
    if args.ood is not None:
        result = run_reward_eval(
            model, value, semantic, args.ood, args.out, progress=not args.quiet, filename="reward_ood.json"
        )
        print("ood:\n" + format_reward(result))
        print(f"wrote {args.out / 'reward_ood.json'}")
    return 0


def _cmd_eval_planning_signal(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vidplan_server.evaluation.planning_signal import VARIANTS, SignalConfig, format_table, run_planning_signal
    from vidplan_server.planning.objective import ScoreConfig
    from vidplan_server.planning.planner import Planner, PlannerConfig

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    variants = tuple(args.variants.split(","))
    try:
        SignalConfig(variants=tuple(v for v in variants if v != "all"))
    except ValueError as exc:
        raise CliError(f"--variants: {exc}") from None
    try:
        cx, cy = (float(v) for v in args.centre.split(","))
        score = ScoreConfig(
            semantic_term=args.semantic_term,
            centre_weight=args.centre_weight,
            centre_xy=(cx, cy),
            progress_weight=args.progress_weight,
        )
    except ValueError as exc:
        raise CliError(f"--centre / --semantic-term / --progress-weight: {exc}") from None
    planner = Planner.load(
        args.ckpt,
        device=check_device(args.device) or "cpu",
        clip_folder=args.clip,
        config=replace(PlannerConfig(), score=score),
    )
    if "all" in variants:  # every variant this bundle can measure
        variants = tuple(v for v in VARIANTS if v != "progress" or planner.progress or planner.locator)
    elif "progress" in variants and planner.progress is None and planner.locator is None:
        raise CliError("--variants progress: the bundle has no progress or locator module (`vidplan train locator`)")
    cfg = SignalConfig(
        steps_per_episode=args.steps_per_episode,
        max_episodes=args.episodes,
        num_proposals=args.proposals,
        seed=args.seed,
        variants=variants,
    )
    result = run_planning_signal(planner, args.data, args.out, cfg, progress=not args.quiet)
    print(format_table(result["summary"]))
    print(f"wrote {args.out / 'planning_signal.json'} and planning_signal.md")
    return 0


def register(groups) -> None:
    """Add ``vidplan eval`` to the top-level subparsers ``groups``."""
    ev = groups.add_parser("eval", help="evaluate the UQ head's calibration, the reward heads and the planning signal")
    ev_cmds = ev.add_subparsers(
        dest="command", required=True, metavar="{calibration,reward,planning-signal,closed-loop}"
    )
    cal = ev_cmds.add_parser(
        "calibration",
        help="ECE/MCE, reliability diagrams and uncertainty-error correlation of the UQ head",
        description="Roll out held-out windows with the bundle's flow map and compare the UQ head's error "
        "distributions with the actual errors: ECE and MCE of P(|error| <= eps) for several eps and of the "
        "top-bin confidence, a reliability diagram per split, Kendall tau (with p-value) and Pearson r between "
        "per-frame entropy and latent / pixel error. Writes OUT/calibration.json, OUT/reliability_*.png and "
        "OUT/heatmaps_*.png (truth, prediction, latent colour map, per-pixel map, error for one window).",
    )
    rew = ev_cmds.add_parser(
        "reward",
        help="value head (Kendall tau, success AUROC) and semantic reward (relevance centroid on the target)",
        description="Value head: Kendall tau between expected value and the true discounted return on every "
        "frame, AUROC of success vs failure at the final frames. Semantic reward: share of frames (with the "
        "target visible) where the relevance centroid lies in the target's ground-truth mask. "
        "Writes OUT/reward.json.",
    )
    for p in (cal, rew):
        p.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
        p.add_argument(
            "--data",
            type=Path,
            required=True,
            help="held-out episodes (e.g. vidplan sim record --split val); not the training data",
        )
        p.add_argument("--out", type=Path, required=True, help="folder for the JSON and PNG results")
        p.add_argument("--device", default=None, help="torch device (default cpu)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    for p in (cal, rew):
        p.add_argument(
            "--ood",
            type=Path,
            default=None,
            help="out-of-distribution episodes (vidplan sim record --split ood), evaluated as split 'ood' "
            "(reward: written to OUT/reward_ood.json)",
        )
    cal.add_argument("--windows", type=positive_int, default=256, help="windows per split (default 256)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the rollout noise (default 0)")
    cal.add_argument(
        "--methods",
        default="bins",
        help="comma-separated uncertainty methods: bins (the 30-bin UQ head), c3-fsc, c3-cs (C3's probe; `vidplan "
        "train c3`), squbed (S-QUBED; `vidplan train squbed`). Anything but bins alone compares them on the same "
        "rollouts (ECE, MCE, Brier, Kendall tau / Pearson r, AUROC, ood/val ratio, ms per plan) and writes "
        "OUT/uq_compare.json, uq_compare.md, reliability_all.png and uq_heatmaps_*.png (default bins)",
    )
    cal.set_defaults(func=_cmd_eval_calibration)
    from vidplan_server.evaluation.closed_loop import cli as closed_loop_cli

    clo = ev_cmds.add_parser(
        "closed-loop",
        help="success rates of agents driving the simulated robot, paired seeds",
        description=closed_loop_cli.DESCRIPTION,
    )
    closed_loop_cli.add_arguments(clo)
    clo.set_defaults(func=closed_loop_cli.run)
    rew.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder",
    )
    rew.set_defaults(func=_cmd_eval_reward)
    sig = ev_cmds.add_parser(
        "planning-signal",
        help="does the planner's score prefer proposals that move toward the instructed object? (with oracles)",
        description="At approach steps of held-out recorded episodes (gripper open, target > 8 cm from the "
        "hand), generate the planner's proposals and score them with the planner's pipeline and with oracle "
        "stages swapped in: model (as planned), model-no-uq, value (the refinement objective), sim (the "
        "simulator executes every proposal from the recorded state; frames through the codec), sim-raw (no "
        "codec), sim-gt-relevance (the instructed object's mask as the relevance map). Reports the mean "
        "Spearman correlation of score with -(distance of the chunk's end to the object) and how often the "
        "winner is among the nearest third, with the true instruction and with one naming a distractor. "
        "Writes OUT/planning_signal.json (every step's scores) and OUT/planning_signal.md.",
    )
    sig.add_argument(
        "--data",
        type=Path,
        required=True,
        help="held-out episodes recorded by `vidplan sim record` (needs simulator seeds and poses)",
    )
    sig.add_argument("--out", type=Path, required=True, help="folder for planning_signal.json / .md")
    sig.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    sig.add_argument("--episodes", type=positive_int, default=None, help="use the first N episodes (default all)")
    sig.add_argument(
        "--steps-per-episode",
        type=positive_int,
        default=3,
        help="approach steps probed per episode, spread over its approach phase (default 3)",
    )
    sig.add_argument(
        "--proposals", type=positive_int, default=None, help="proposals per step (default: the planner's N)"
    )
    sig.add_argument(
        "--variants",
        default="all",
        help="comma-separated scoring variants to measure: model, model-no-uq, value, progress (bundles with a "
        "progress module), sim, sim-raw, sim-gt-relevance; all: every one the bundle supports (default all; the "
        "sim ones cost the most)",
    )
    sig.add_argument("--seed", type=int, default=0, help="proposal and rollout noise, distractor choice (default 0)")
    sig.add_argument(
        "--semantic-term",
        choices=("relevance", "frame"),
        default="relevance",
        help="r_s of the score: relevance (size of the region the words point at in the wrist view, "
        "the planner's default) or frame (the encoder's global frame similarity, as before)",
    )
    sig.add_argument(
        "--centre-weight",
        type=float,
        default=0.1,
        help="lambda on the distance of the relevance centroid from the desired centre (default 0.1)",
    )
    sig.add_argument(
        "--progress-weight",
        type=float,
        default=1.0,
        help="weight per metre of the progress head's predicted hand-to-object distance in the score, for "
        "bundles with a progress module; 0 measures the score without it (default 1)",
    )
    sig.add_argument(
        "--centre",
        default="0.5,0.65",
        help="desired centre c of the relevant region in the wrist view, x,y in [0, 1] (default 0.5,0.65)",
    )
    sig.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder",
    )
    sig.add_argument("--device", default=None, help="torch device (default cpu)")
    sig.add_argument("--quiet", action="store_true", help="no progress bar")
    sig.set_defaults(func=_cmd_eval_planning_signal)
