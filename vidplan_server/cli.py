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

Every command checks its arguments before starting work and exits with status 2 and a message
naming the bad option or file on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vidplan_server.argtypes import fraction, positive_int


class CliError(Exception):
    """Bad input on the command line; printed as ``vidplan: error: ...`` with exit status 2."""


# ---------------------------------------------------------------------------------------- sim
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
    summary = generate_captions(args.out, args.images, seed=args.seed, cfg=CaptionConfig(resolution=resolution),
                                workers=args.workers, progress=not args.quiet)
    print(f"{args.out}: rendered {summary.rendered} captioned image(s), {summary.skipped} already present, "
          f"in {summary.seconds / 60:.1f} min")
    return 0


def _cmd_sim_dagger(args: argparse.Namespace) -> int:
    from vidplan_server.sim.record import parse_resolution
    from vidplan_server.training.dagger import DaggerConfig, DaggerError, collect

    if not args.ckpt.is_dir():
        raise CliError(f"--ckpt {args.ckpt}: checkpoint folder does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    try:
        config = DaggerConfig(seed=args.seed, beta=args.beta, open_loop_horizon=args.open_loop_horizon,
                              max_steps=args.max_steps, resolution=parse_resolution(args.resolution))
        s = collect(args.ckpt, args.out, args.episodes, config, workers=args.workers, progress=not args.quiet)
    except (DaggerError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(f"{args.out}: {s['new']} new episode(s) of {s['episodes']} ({s['successes']} ended in success, "
          f"{s['samples']} labelled steps) in {s['seconds'] / 60:.1f} min; train on them with `vidplan train policy "
          f"--extra-data {args.out}`")
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
        cfg = BranchConfig(states=args.states, proposals=args.proposals, policy_samples=args.policy_samples,
                           seed=args.seed)
        s = record_branches(args.data, args.ckpt, args.out, cfg, progress=not args.quiet)
    except BranchError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.out}: {s['new']} new state(s) of {s['states']}, {s['branches']} branches in "
          f"{s['seconds'] / 60:.1f} min; train on them with `vidplan train world --extra-data {args.out}`")
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


# ---------------------------------------------------------------------------------------- data
def _cmd_data_info(args: argparse.Namespace) -> int:
    from vidplan_server.data.info import dataset_summary, format_summary
    from vidplan_server.data.reader import EpisodeDataset

    ds = EpisodeDataset(args.dataset)
    summary = dataset_summary(ds)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, ds.features))
    return 0


# ---------------------------------------------------------------------------------------- train
def _cmd_train(args: argparse.Namespace) -> int:
    from vidplan_server.training import commands

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    for extra in args.extra_data:
        if not extra.is_dir():
            raise CliError(f"--extra-data {extra}: dataset folder does not exist")
    if args.extra_data and args.stage in ("codec", "semantic"):
        raise CliError(f"--extra-data is not used by `train {args.stage}` (value: episode folders; policy: DAgger "
                       "folders; world, flowmap, uq: branch folders)")
    if args.init_from is not None and (args.stage != "world" or not args.init_from.is_dir()):
        raise CliError(f"--init-from {args.init_from}: only for `train world`, and the folder must exist")
    if args.captions is not None and (args.stage != "semantic" or not args.captions.is_dir()):
        raise CliError(f"--captions {args.captions}: only for `train semantic`, and the folder must exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    opts = commands.TrainOptions(
        data=args.data, out=args.out, preset=args.preset, steps=args.steps, resume=args.resume, seed=args.seed,
        device=args.device, held_out_fraction=args.held_out_fraction, progress=not args.quiet,
    )
    _check_device(args.device)
    if args.stage == "codec":
        result = commands.train_codec(opts)
    elif args.stage == "world":
        result = commands.train_world(opts, history=args.history, horizon=args.horizon, frame_stride=args.frame_stride,
                                      init_from=args.init_from, branches=tuple(args.extra_data))
    elif args.stage == "flowmap":
        result = commands.train_flowmap(opts, branches=tuple(args.extra_data))
    elif args.stage == "uq":
        result = commands.train_uq(opts, flow_steps=args.flow_steps, branches=tuple(args.extra_data))
    elif args.stage == "value":
        result = commands.train_value(opts, gamma=args.gamma, flow_steps=args.flow_steps,
                                      extra_data=tuple(args.extra_data))
    elif args.stage == "policy":
        result = commands.train_policy(opts, dagger=tuple(args.extra_data))
    elif args.captions is not None:
        from vidplan_server.training.caption_stage import CaptionTrainConfig

        cfg = CaptionTrainConfig(robot_share=args.robot_share, codec_share=args.codec_share)
        result = commands.train_semantic_captions(opts, args.captions, frame_step=args.frame_step, cfg=cfg)
    else:
        result = commands.train_semantic(opts, frame_step=args.frame_step)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    print(f"{args.out}: {args.stage} trained to step {result.steps} in {result.seconds / 60:.1f} min; held-out {shown}")
    return 0


# ---------------------------------------------------------------------------------------- eval
def _load_for_eval(args: argparse.Namespace):
    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.models.world_model import WorldModel

    for name in ("data", "ood"):
        path = getattr(args, name, None)
        if path is not None and not path.is_dir():
            raise CliError(f"--{name} {path}: dataset folder does not exist")
    ckpt = args.ckpt or DEFAULT_CHECKPOINT
    device = _check_device(args.device) or "cpu"
    return ckpt, WorldModel.load(ckpt, device=device)


def _cmd_eval_calibration(args: argparse.Namespace) -> int:
    from vidplan_server.evaluation.heads_quality import CalibrationConfig, format_calibration, run_calibration
    from vidplan_server.models.heads import load_uq_head
    from vidplan_server.models.heatmaps import load_colormap

    ckpt, model = _load_for_eval(args)
    uq = load_uq_head(ckpt).to(model.device)
    colormap = load_colormap(ckpt, model.codec)
    splits = {"val": args.data, **({"ood": args.ood} if args.ood else {})}
    cfg = CalibrationConfig(windows=args.windows, seed=args.seed)
    result = run_calibration(model, uq, splits, args.out, cfg, progress=not args.quiet, colormap=colormap)
    print(format_calibration(result))
    print(f"wrote {args.out / 'calibration.json'}")
    return 0


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
        result = run_reward_eval(model, value, semantic, args.ood, args.out, progress=not args.quiet,
                                 filename="reward_ood.json")
        print("ood:\n" + format_reward(result))
        print(f"wrote {args.out / 'reward_ood.json'}")
    return 0


def _cmd_eval_planning_signal(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vidplan_server.evaluation.planning_signal import SignalConfig, format_table, run_planning_signal
    from vidplan_server.planning.objective import ScoreConfig
    from vidplan_server.planning.planner import Planner, PlannerConfig

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    try:
        cfg = SignalConfig(steps_per_episode=args.steps_per_episode, max_episodes=args.episodes,
                           num_proposals=args.proposals, seed=args.seed, variants=tuple(args.variants.split(",")))
    except ValueError as exc:
        raise CliError(f"--variants: {exc}") from None
    try:
        cx, cy = (float(v) for v in args.centre.split(","))
        score = ScoreConfig(semantic_term=args.semantic_term, centre_weight=args.centre_weight, centre_xy=(cx, cy))
    except ValueError as exc:
        raise CliError(f"--centre / --semantic-term: {exc}") from None
    planner = Planner.load(args.ckpt, device=_check_device(args.device) or "cpu", clip_folder=args.clip,
                           config=replace(PlannerConfig(), score=score))
    result = run_planning_signal(planner, args.data, args.out, cfg, progress=not args.quiet)
    print(format_table(result["summary"]))
    print(f"wrote {args.out / 'planning_signal.json'} and planning_signal.md")
    return 0


def _check_device(name: str | None) -> str | None:
    if not name:
        return None
    import torch

    try:
        torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine")
    return name


# ---------------------------------------------------------------------------------------- plan
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
    planner = Planner.load(args.ckpt, device=_check_device(args.device) or "cpu", clip_folder=args.clip)
    episode = dataset.load_episode(args.index, ground_truth=False)
    options = PlanOptions(num_proposals=args.proposals, refine_iters=args.iters, flow_steps=args.flow_steps,
                          seed=args.seed, return_heatmaps=True)
    try:
        request = request_from_episode(episode, args.step, planner.history_len, planner.frame_stride, options,
                                       args.instruction)
        result = planner.plan(request)
    except PlanningError as exc:
        raise CliError(f"--step {args.step}: {exc}") from None
    png, js = save_plan(request, result, args.out, f"plan_ep{args.index}_step{args.step}")
    kind = result.proposal_kinds[result.winner]
    print(f"winner {result.winner} ({kind}), score {result.proposal_scores[result.winner]:+.3f}, "
          f"{'refined' if result.refined else 'not refined'}, confidence {result.confidence:.2f}, "
          f"{result.timings_ms['total']:.0f} ms")
    print(f"wrote {png} and {js}")
    return 0


# ---------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidplan",
        description="VidPlan: inference-time planning with an action-conditioned video world model.",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{sim,data,train,eval,plan,serve,demo}")

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
        "approach, with the two exterior views, per-object masks and the entities to caption them "
        "('<colour> <object>', the instruction forms). The semantic encoder trains on them with `vidplan train "
        "semantic --captions DIR`; the policy, world model and value head never see them. Resumable: re-running "
        "with the same arguments renders only missing shards; shards are written atomically.",
    )
    cap.add_argument("--out", type=Path, required=True, help="output folder (created, or resumed)")
    cap.add_argument("--images", type=positive_int, required=True,
                     help="total number of images (arm poses, three views each) the folder should hold")
    cap.add_argument("--seed", type=int, default=0, help="base seed; shard k uses a seed derived from it (default 0)")
    cap.add_argument("--resolution", default="64x64", help="per-view HxW (default 64x64, the encoder's input)")
    cap.add_argument("--workers", type=positive_int, default=max(1, min(4, os.cpu_count() or 1)),
                     help="parallel simulator processes (default: number of cores, at most 4)")
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
    dag.add_argument("--beta", type=fraction, default=0.3,
                     help="probability that an executed chunk is the expert's, not the policy's (default 0.3)")
    dag.add_argument("--seed", type=int, default=500,
                     help="base seed of the train-split scenes (default 500, apart from recordings and benchmark)")
    dag.add_argument("--open-loop-horizon", type=positive_int, default=8,
                     help="policy rows executed before re-planning (default 8)")
    dag.add_argument("--max-steps", type=positive_int, default=240, help="control steps per episode (default 240)")
    dag.add_argument("--resolution", default="64x64", help="per-view HxW of the renders (default 64x64)")
    dag.add_argument("--workers", type=positive_int, default=max(1, min(4, os.cpu_count() or 1)),
                     help="parallel simulator processes, one torch thread each (default: cores, at most 4)")
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
    br.add_argument("--policy-samples", type=int, default=4,
                    help="how many of them come from the bundle's policy, 0..--proposals (default 4)")
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

    tr = groups.add_parser(
        "train",
        help="train the codec, world model, flow map and the UQ / value / semantic heads into a bundle",
        description="Train one stage into the checkpoint folder --out, in order: codec, then world (the EDM "
        "video model; needs the codec), then flowmap (distils world into a few-step flow map); then the heads: "
        "uq (on the flow map's own samples of a calibration dataset the world model never saw; also stores "
        "the heatmap colour basis), value (discounted return per frame, on the training data) and semantic "
        "(the instruction-frame dual encoder, on simulator episodes with target masks); policy (the robot's own "
        "language-conditioned behaviour-cloning policy with a flow-matching action head, on the successful nominal "
        "episodes of a train-split recording: the baseline and the proposer's source of candidates). "
        "Shows a progress bar with the loss, evaluates on held-out episodes, saves resumable state "
        "in CKPT/training/, uses CUDA with bf16 autocast when present and the CPU otherwise.",
    )
    tr.add_argument("stage", choices=("codec", "world", "flowmap", "uq", "value", "semantic", "policy"),
                    help="what to train")
    tr.add_argument("--data", type=Path, required=True,
                    help="dataset folder (vidplan sim record, or a DROID port); for uq a calibration dataset "
                    "recorded apart from the world model's training data")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint folder; stages add their module to it")
    tr.add_argument("--preset", choices=("tiny", "small", "base"), default="small",
                    help="model size and schedule: tiny (tests), small (the bundled default, CPU), base (GPU) "
                    "(default small)")
    tr.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the preset's)")
    tr.add_argument("--resume", action="store_true", help="continue the run saved in --out/training/<stage>")
    tr.add_argument("--seed", type=int, default=0, help="seed of weights, batches and the held-out split (default 0)")
    tr.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present)")
    tr.add_argument("--held-out-fraction", type=fraction, default=0.1,
                    help="share of episodes held out for evaluation (default 0.1)")
    tr.add_argument("--history", type=int, choices=range(1, 7), default=2, metavar="T",
                    help="world: history frames the model sees, 1..6 (default 2)")
    tr.add_argument("--horizon", type=positive_int, default=5, metavar="H",
                    help="world: predicted frames per chunk (default 5)")
    tr.add_argument("--frame-stride", type=positive_int, default=3,
                    help="world: control steps per model frame (default 3, i.e. 5 Hz at 15 Hz control)")
    tr.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                    help="world: start from this bundle's world module (weights, architecture, action statistics) "
                    "instead of random weights, e.g. to train the bundled model longer; --out must hold the same "
                    "codec (default: random initialisation)")
    tr.add_argument("--flow-steps", type=positive_int, default=1, metavar="K",
                    help="uq, value: flow-map steps of the samples the head learns from; use the planner's k "
                    "(default 1)")
    tr.add_argument("--gamma", type=fraction, default=0.99,
                    help="value: discount per control step of the Monte-Carlo return (default 0.99)")
    tr.add_argument("--extra-data", type=Path, nargs="+", default=[], metavar="DIR",
                    help="value: more episode folders to train on (each split into training and held-out "
                    "episodes like --data); never the data you evaluate on. policy: DAgger folders of `vidplan "
                    "sim dagger`, every labelled step added to the training samples (a round: --resume --steps N). "
                    "world, flowmap, uq: branch folders of `vidplan sim branches` (the planner's proposals executed "
                    "from recorded states), one window per branch, shards split like episodes; for uq, branches "
                    "of the calibration recording, which the world model never saw")
    tr.add_argument("--frame-step", type=positive_int, default=4,
                    help="semantic: use every N-th step of each episode (default 4)")
    tr.add_argument("--captions", type=Path, default=None, metavar="DIR",
                    help="semantic: train on the captioned renders of `vidplan sim captions` (every object and "
                    "colour of the simulator, the CLIP stand-in's data); --data then only adds train-split robot "
                    "frames (--robot-share of each batch) and their held-out episodes for evaluation")
    tr.add_argument("--robot-share", type=fraction, default=0.25,
                    help="semantic with --captions: share of each batch drawn from --data's robot frames "
                    "(0: renders only) (default 0.25)")
    tr.add_argument("--codec-share", type=fraction, default=0.35,
                    help="semantic with --captions: share of each batch passed through the bundle's codec "
                    "(encode + decode), as the planner scores decoded frames (default 0.35)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)

    ev = groups.add_parser("eval", help="evaluate the UQ head's calibration, the reward heads and the planning signal")
    ev_cmds = ev.add_subparsers(dest="command", required=True,
                                metavar="{calibration,reward,planning-signal,closed-loop}")
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
        p.add_argument("--data", type=Path, required=True,
                       help="held-out episodes (e.g. vidplan sim record --split val); not the training data")
        p.add_argument("--out", type=Path, required=True, help="folder for the JSON and PNG results")
        p.add_argument("--device", default=None, help="torch device (default cpu)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    for p in (cal, rew):
        p.add_argument("--ood", type=Path, default=None,
                       help="out-of-distribution episodes (vidplan sim record --split ood), evaluated as split 'ood' "
                       "(reward: written to OUT/reward_ood.json)")
    cal.add_argument("--windows", type=positive_int, default=256, help="windows per split (default 256)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the rollout noise (default 0)")
    cal.set_defaults(func=_cmd_eval_calibration)
    from vidplan_server.evaluation.closed_loop import cli as closed_loop_cli

    clo = ev_cmds.add_parser("closed-loop", help="success rates of agents driving the simulated robot, paired seeds",
                             description=closed_loop_cli.DESCRIPTION)
    closed_loop_cli.add_arguments(clo)
    clo.set_defaults(func=closed_loop_cli.run)
    rew.add_argument("--clip", type=Path, default=None,
                     help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder")
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
    sig.add_argument("--data", type=Path, required=True,
                     help="held-out episodes recorded by `vidplan sim record` (needs simulator seeds and poses)")
    sig.add_argument("--out", type=Path, required=True, help="folder for planning_signal.json / .md")
    sig.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (default: the bundled one)")
    sig.add_argument("--episodes", type=positive_int, default=None, help="use the first N episodes (default all)")
    sig.add_argument("--steps-per-episode", type=positive_int, default=3,
                     help="approach steps probed per episode, spread over its approach phase (default 3)")
    sig.add_argument("--proposals", type=positive_int, default=None,
                     help="proposals per step (default: the planner's N)")
    sig.add_argument("--variants", default=",".join(("model", "model-no-uq", "value", "sim", "sim-raw",
                                                      "sim-gt-relevance")),
                     help="comma-separated scoring variants to measure (default: all; the sim ones cost the most)")
    sig.add_argument("--seed", type=int, default=0, help="proposal and rollout noise, distractor choice (default 0)")
    sig.add_argument("--semantic-term", choices=("relevance", "frame"), default="relevance",
                     help="r_s of the score: relevance (size of the region the words point at in the wrist view, "
                     "the planner's default) or frame (the encoder's global frame similarity, as before)")
    sig.add_argument("--centre-weight", type=float, default=0.1,
                     help="lambda on the distance of the relevance centroid from the desired centre (default 0.1)")
    sig.add_argument("--centre", default="0.5,0.65",
                     help="desired centre c of the relevant region in the wrist view, x,y in [0, 1] "
                     "(default 0.5,0.65)")
    sig.add_argument("--clip", type=Path, default=None,
                     help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder")
    sig.add_argument("--device", default=None, help="torch device (default cpu)")
    sig.add_argument("--quiet", action="store_true", help="no progress bar")
    sig.set_defaults(func=_cmd_eval_planning_signal)

    plan = groups.add_parser(
        "plan",
        help="plan offline at one step of a recorded episode and save a picture",
        description="Plan at step K of a recorded episode with the bundled (or given) checkpoint, as the server "
        "would for a robot at that moment, and write plan_ep<I>_step<K>.png (the three views, the winner's "
        "predicted frames, its uncertainty heatmaps and every proposal's score) and a .json of the result.",
    )
    plan.add_argument("--episode", type=Path, required=True, metavar="PATH",
                      help="dataset folder (a VidPlan recording or a DROID LeRobot port)")
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
    plan.add_argument("--clip", type=Path, default=None,
                      help="score with a local transformers CLIP/SigLIP folder instead of the bundled encoder")
    plan.set_defaults(func=_cmd_plan)

    from vidplan_server.serving import cli_serve

    srv = groups.add_parser("serve", help="serve the planner over gRPC and HTTP (one process, one event loop)",
                            description=cli_serve.DESCRIPTION)
    cli_serve.add_arguments(srv)
    srv.set_defaults(func=cli_serve.run)

    from vidplan_server.serving import demo

    dem = groups.add_parser("demo", help="one simulated episode driven through the robot client against a server",
                            description=demo.DESCRIPTION)
    demo.add_arguments(dem)
    dem.set_defaults(func=demo.run)
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
