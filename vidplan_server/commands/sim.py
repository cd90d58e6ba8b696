"""``vidplan sim ...``: the simulated scene (record, captions, dagger, branches, preview)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vidplan_server.argtypes import CliError, fraction, positive_int


def _cmd_sim_record(args: argparse.Namespace) -> int:
    from vidplan_server.sim.episode import EpisodeConfig
    from vidplan_server.sim.record import parse_resolution, record

    try:
        resolution = parse_resolution(args.resolution)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    config = EpisodeConfig(split=args.split, resolution=resolution, imperfect_fraction=args.imperfect_fraction)
    summary = record(
        args.out, args.episodes, seed=args.seed, config=config, workers=args.workers, progress=not args.quiet
    )
    print(
        f"{args.out}: recorded {summary.recorded} episode(s), {summary.skipped} already present; "
        f"success {summary.successes}/{summary.recorded}; {summary.episodes_per_minute:.1f} episodes/min"
    )
    return 0


def _cmd_sim_captions(args: argparse.Namespace) -> int:
    from vidplan_server.sim.captions import CaptionConfig, generate_captions
    from vidplan_server.sim.record import parse_resolution

    try:
        resolution = parse_resolution(args.resolution)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    summary = generate_captions(
        args.out,
        args.images,
        seed=args.seed,
        cfg=CaptionConfig(resolution=resolution),
        workers=args.workers,
        progress=not args.quiet,
    )
    print(
        f"{args.out}: rendered {summary.rendered} captioned image(s), {summary.skipped} already present, "
        f"in {summary.seconds / 60:.1f} min"
    )
    return 0


def _cmd_sim_dagger(args: argparse.Namespace) -> int:
    from vidplan_server.sim.record import parse_resolution
    from vidplan_server.training.dagger import DaggerConfig, DaggerError, collect

    if not args.ckpt.is_dir():
        raise CliError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    try:
        config = DaggerConfig(
            seed=args.seed,
            beta=args.beta,
            temperature=args.temperature,
            open_loop_horizon=args.open_loop_horizon,
            max_steps=args.max_steps,
            resolution=parse_resolution(args.resolution),
        )
        s = collect(args.ckpt, args.out, args.episodes, config, workers=args.workers, progress=not args.quiet)
    except (DaggerError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(
        f"{args.out}: {s['new']} new episode(s) of {s['episodes']} ({s['successes']} ended in success, "
        f"{s['samples']} labelled steps) in {s['seconds'] / 60:.1f} min; train on them with `vidplan train policy "
        f"--extra-data {args.out}`"
    )
    return 0


def _cmd_sim_branches(args: argparse.Namespace) -> int:
    from vidplan_server.apps.branches import BranchConfig, BranchError, record_branches

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    if args.ckpt is not None and not args.ckpt.is_dir():
        raise CliError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    try:
        cfg = BranchConfig(
            states=args.states, proposals=args.proposals, policy_samples=args.policy_samples, seed=args.seed
        )
        s = record_branches(args.data, args.ckpt, args.out, cfg, progress=not args.quiet)
    except BranchError as exc:
        raise CliError(str(exc)) from None
    print(
        f"{args.out}: {s['new']} new state(s) of {s['states']}, {s['branches']} branches in "
        f"{s['seconds'] / 60:.1f} min; train on them with `vidplan train world --extra-data {args.out}`"
    )
    return 0


def _cmd_sim_preview(args: argparse.Namespace) -> int:
    from vidplan_server.data.preview import write_preview
    from vidplan_server.data.reader import EpisodeDataset

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise CliError(f"--out {args.out}: the contact sheet must be a .png or .jpg file")
    ds = EpisodeDataset(args.dataset)
    if not 0 <= args.episode < len(ds):
        raise CliError(f"--episode {args.episode}: {args.dataset} holds episodes 0..{len(ds) - 1}")
    episode = ds.load_episode(args.episode)
    try:
        video = write_preview(episode, args.out, title=f"episode {args.episode}: ")
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write ({exc})") from exc
    print(f"wrote {args.out} and {video}")
    return 0


def register(groups) -> None:
    """Add ``vidplan sim`` to the top-level subparsers ``groups``."""
    sim = groups.add_parser("sim", help="simulated DROID scene: record and preview episodes, captioned renders")
    sim_cmds = sim.add_subparsers(dest="command", required=True, metavar="{record,captions,dagger,branches,preview}")

    rec = sim_cmds.add_parser(
        "record",
        help="record scripted-expert episodes into a LeRobot v3.0 dataset",
        description="Record episodes of the simulated DROID scene (PyBullet) with the scripted expert "
        "into a LeRobot v3.0 dataset. Resumable: re-running with the same arguments records only the "
        "missing episodes.",
    )
    rec.add_argument(
        "--episodes", type=positive_int, required=True, help="total number of episodes the dataset should hold"
    )
    rec.add_argument("--out", type=Path, required=True, help="dataset folder (created, or resumed)")
    rec.add_argument("--seed", type=int, default=0, help="base seed; episode i uses a seed derived from it (default 0)")
    rec.add_argument(
        "--split",
        choices=("train", "val", "ood"),
        default="train",
        help="train / val: training objects and colours, 1-3 distractors; ood: novel objects or "
        "colours as targets and 4-6 distractors (default train)",
    )
    rec.add_argument(
        "--resolution",
        default="64x64",
        help="per-view HxW, e.g. 64x64 (training default) or 180x320 (DROID) (default 64x64)",
    )
    rec.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel simulator processes (default: number of cores, at most 4)",
    )
    rec.add_argument(
        "--imperfect-fraction",
        type=fraction,
        default=0.2,
        help="share of episodes run with a failure mode (wrong target, drop, miss, timeout) (default 0.2)",
    )
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    rec.set_defaults(func=_cmd_sim_record)

    cap = sim_cmds.add_parser(
        "captions",
        help="captioned renders of every object and colour (no robot actions) for the semantic encoder",
        description="Render scenes of every split's objects and colours (1-6 objects and a container), each in "
        "several random arm poses whose wrist camera looks down from the heights and angles of a top-down "
        "approach, with the two exterior views, per-object masks, each object's position and the entities to "
        "caption them ('<colour> <object>', the instruction forms). The semantic encoder trains on them with "
        "`vidplan train semantic --captions DIR`, the target locator with `vidplan train locator --captions DIR`; "
        "the policy, world model and value head never see them. Resumable: re-running "
        "with the same arguments renders only missing shards; shards are written atomically.",
    )
    cap.add_argument("--out", type=Path, required=True, help="output folder (created, or resumed)")
    cap.add_argument(
        "--images",
        type=positive_int,
        required=True,
        help="total number of images (arm poses, three views each) the folder should hold",
    )
    cap.add_argument("--seed", type=int, default=0, help="base seed; shard k uses a seed derived from it (default 0)")
    cap.add_argument("--resolution", default="64x64", help="per-view HxW (default 64x64, the encoder's input)")
    cap.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel simulator processes (default: number of cores, at most 4)",
    )
    cap.add_argument("--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=_cmd_sim_captions)

    dag = sim_cmds.add_parser(
        "dagger",
        help="run the bundle's policy in train-split scenes and record the scripted expert's labels (DAgger)",
        description="DAgger data for the policy: drive the simulated robot with the bundle's policy (a chunk "
        "every --open-loop-horizon steps; with probability --beta the expert's chunk instead) in train-split "
        "scenes, and at every step record the three views, the state and what the noise-free scripted expert "
        "would do from there (its next chunk). Train on it with `vidplan train policy --extra-data OUT`. "
        "Resumable: re-running with the same arguments runs only the missing episodes.",
    )
    dag.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder with a policy module")
    dag.add_argument("--out", type=Path, required=True, help="output folder (created, or resumed)")
    dag.add_argument("--episodes", type=positive_int, required=True, help="total episodes the folder should hold")
    dag.add_argument(
        "--beta",
        type=fraction,
        default=0.3,
        help="probability that an executed chunk is the expert's, not the policy's (default 0.3)",
    )
    dag.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="standard deviation of the policy's starting noise, in (0, 4] (default 0.5, the planner's "
        "--policy-temperature, so the policy visits the states it visits when deployed; 1.0 before this option)",
    )
    dag.add_argument(
        "--seed",
        type=int,
        default=500,
        help="base seed of the train-split scenes (default 500, apart from recordings and benchmark)",
    )
    dag.add_argument(
        "--open-loop-horizon", type=positive_int, default=8, help="policy rows executed before re-planning (default 8)"
    )
    dag.add_argument("--max-steps", type=positive_int, default=240, help="control steps per episode (default 240)")
    dag.add_argument("--resolution", default="64x64", help="per-view HxW of the renders (default 64x64)")
    dag.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="parallel simulator processes, one torch thread each (default: cores, at most 4)",
    )
    dag.add_argument("--quiet", action="store_true", help="no progress bar")
    dag.set_defaults(func=_cmd_sim_dagger)

    br = sim_cmds.add_parser(
        "branches",
        help="execute the planner's proposals from recorded states: action-diverse world-model data",
        description="Online world-model data: pick --states recorded steps of a train-split recording (gripper "
        "open, full history), rebuild each in the simulator, let the bundle's planner propose --proposals chunks "
        "for it (--policy-samples from its policy, the rest from the Jacobian basis) and execute and render every "
        "one from the same state. The world model trained on expert episodes alone ignores its actions (the next "
        "frames follow from the history); branches show it what different actions do. Train on them with "
        "`vidplan train world --extra-data OUT`. Resumable: re-running with the same arguments records only "
        "missing states.",
    )
    br.add_argument("--data", type=Path, required=True, help="train-split recording (vidplan sim record)")
    br.add_argument("--ckpt", type=Path, default=None, help="bundle whose planner proposes (default: the bundled one)")
    br.add_argument("--out", type=Path, required=True, help="output folder (created, or resumed)")
    br.add_argument("--states", type=positive_int, default=500, help="recorded states to branch from (default 500)")
    br.add_argument("--proposals", type=positive_int, default=10, help="chunks executed per state (default 10)")
    br.add_argument(
        "--policy-samples",
        type=int,
        default=4,
        help="how many of them come from the bundle's policy, 0..--proposals (default 4)",
    )
    br.add_argument("--seed", type=int, default=0, help="picks the states and seeds the proposals (default 0)")
    br.add_argument("--quiet", action="store_true", help="no progress bar")
    br.set_defaults(func=_cmd_sim_branches)

    prev = sim_cmds.add_parser(
        "preview",
        help="contact sheet PNG + mp4 of one episode",
        description="Render a contact sheet (three views over time, instruction, success) of one episode "
        "to --out, and the episode as an mp4 beside it (same name, .mp4).",
    )
    prev.add_argument("dataset", type=Path, help="dataset folder")
    prev.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    prev.add_argument("--out", type=Path, required=True, help="output PNG path; the mp4 is written beside it")
    prev.set_defaults(func=_cmd_sim_preview)
