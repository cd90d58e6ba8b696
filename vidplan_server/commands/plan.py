"""``vidplan plan``: plan offline at one step of a recorded episode and save a picture and a JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidplan_server.argtypes import CliError, check_device, positive_int


def _cmd_plan(args: argparse.Namespace) -> int:
    from vidplan_server.data.reader import EpisodeDataset
    from vidplan_server.planning.offline import request_from_episode, save_plan
    from vidplan_server.planning.planner import Planner
    from vidplan_server.planning.types import PlanningError, PlanOptions

    if not args.episode.is_dir():
        raise CliError(f"--episode {args.episode}: dataset folder does not exist")
    dataset = EpisodeDataset(args.episode)
    if not 0 <= args.index < len(dataset):
        raise CliError(f"--index {args.index}: the dataset has episodes 0..{len(dataset) - 1}")
    planner = Planner.load(args.ckpt, device=check_device(args.device) or "cpu", clip_folder=args.clip)
    episode = dataset.load_episode(args.index, ground_truth=False)
    options = PlanOptions(
        num_proposals=args.proposals,
        refine_iters=args.iters,
        flow_steps=args.flow_steps,
        seed=args.seed,
        return_heatmaps=True,
    )
    try:
        request = request_from_episode(
            episode, args.step, planner.history_len, planner.frame_stride, options, args.instruction
        )
        result = planner.plan(request)
    except PlanningError as exc:
        raise CliError(f"--step {args.step}: {exc}") from None
    png, js = save_plan(request, result, args.out, f"plan_ep{args.index}_step{args.step}")
    kind = result.proposal_kinds[result.winner]
    print(
        f"winner {result.winner} ({kind}), score {result.proposal_scores[result.winner]:+.3f}, "
        f"{'refined' if result.refined else 'not refined'}, confidence {result.confidence:.2f}, "
        f"{result.timings_ms['total']:.0f} ms"
    )
    print(f"wrote {png} and {js}")
    return 0


def register(groups) -> None:
    """Add ``vidplan plan`` to the top-level subparsers ``groups``."""
    plan = groups.add_parser(
        "plan",
        help="plan offline at one step of a recorded episode and save a picture",
        description="Plan at step K of a recorded episode with the bundled (or given) checkpoint, as the server "
        "would for a robot at that moment, and write plan_ep<I>_step<K>.png (the three views, the winner's "
        "predicted frames, its uncertainty heatmaps and every proposal's score) and a .json of the result.",
    )
    plan.add_argument(
        "--episode",
        type=Path,
        required=True,
        metavar="PATH",
        help="dataset folder (a VidPlan recording or a DROID LeRobot port)",
    )
    plan.add_argument("--index", type=int, default=0, help="episode index inside the dataset (default 0)")
    plan.add_argument("--step", type=int, required=True, metavar="K", help="control step to plan at (0-based)")
    plan.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled checkpoint)")
    plan.add_argument("--out", type=Path, default=Path("outputs/plan"), help="output folder (default outputs/plan)")
    plan.add_argument("--instruction", default=None, help="override the episode's instruction")
    plan.add_argument("--proposals", type=positive_int, default=None, help="N proposals (default: planner's, 12)")
    plan.add_argument("--iters", type=int, default=None, help="refinement iterations (default: planner's, 3)")
    plan.add_argument("--flow-steps", type=positive_int, default=None, help="k flow-map steps (default 1)")
    plan.add_argument("--seed", type=int, default=0, help="seed of proposal and rollout noise (default 0)")
    plan.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)")
    plan.add_argument(
        "--clip",
        type=Path,
        default=None,
        help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder",
    )
    plan.set_defaults(func=_cmd_plan)
