"""``vidplan train <stage>``: one training stage into a checkpoint bundle (``vidplan_server.training``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidplan_server.argtypes import (
    CliError,
    check_device,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from vidplan_server.commands import train_probes


def _cmd_train(args: argparse.Namespace) -> int:
    from vidplan_server.training import commands

    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: dataset folder does not exist")
    for extra in args.extra_data:
        if not extra.is_dir():
            raise CliError(f"--extra-data {extra}: dataset folder does not exist")
    if args.extra_data and args.stage in ("codec", "semantic"):
        raise CliError(
            f"--extra-data is not used by `train {args.stage}` (value, progress, locator: episode folders; "
            "policy: DAgger folders; world, flowmap, uq: branch folders)"
        )
    if args.init_from is not None and (args.stage not in ("world", "policy") or not args.init_from.is_dir()):
        raise CliError(f"--init-from {args.init_from}: only for `train world|policy`, and the folder must exist")
    if args.init_module != "policy" and (args.stage != "policy" or args.init_from is None or not args.target_map):
        raise CliError(f"--init-module {args.init_module}: only for `train policy --target-map --init-from CKPT`")
    if args.target_map and args.stage != "policy":
        raise CliError(f"--target-map is only for `train policy`, not `train {args.stage}`")
    if args.action_deltas and args.stage != "world":
        raise CliError(f"--action-deltas is only for `train world`, not `train {args.stage}`")
    if (args.p_mean is None) != (args.p_std is None) or (args.p_mean is not None and args.stage != "world"):
        raise CliError("--p-mean and --p-std go together, and only with `train world`")
    if (args.residual or args.action_maps) and (args.stage != "world" or args.init_from is not None):
        raise CliError("--residual and --action-maps are only for a fresh `train world` (not with --init-from)")
    train_probes.check_options(args)
    if args.pooling is not None and args.stage != "policy":
        raise CliError(f"--pooling is only for `train policy`, not `train {args.stage}`")
    if args.target_aux is not None and args.stage != "policy":
        raise CliError(f"--target-aux is only for `train policy`, not `train {args.stage}`")
    if args.captions is not None and (args.stage not in ("semantic", "locator") or not args.captions.is_dir()):
        raise CliError(f"--captions {args.captions}: only for `train semantic|locator`, and the folder must exist")
    if args.out.exists() and not args.out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    from vidplan_server import distributed

    world = distributed.world_from_env()  # torchrun --nproc-per-node N: one rank of N (vidplan_server/distributed.py)
    opts = commands.TrainOptions(
        data=args.data,
        out=args.out,
        preset=args.preset,
        steps=args.steps,
        lr=args.lr,
        resume=args.resume,
        seed=args.seed,
        device=distributed.device_for(world, args.device) if world.distributed else args.device,
        held_out_fraction=args.held_out_fraction,
        progress=not args.quiet and world.rank == 0,
    )
    check_device(opts.device)
    with distributed.data_parallel(world) as stages:
        result = _train_stage(args, commands, opts)
    if world.rank != 0:
        return 0
    if world.distributed:
        print(distributed.loss_summary(stages, world))
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.final_eval.items())
    print(f"{args.out}: {args.stage} trained to step {result.steps} in {result.seconds / 60:.1f} min; held-out {shown}")
    return 0


def _train_stage(args: argparse.Namespace, commands, opts):
    if args.stage == "codec":
        result = commands.train_codec(opts)
    elif args.stage == "world":
        result = commands.train_world(
            opts,
            history=args.history,
            horizon=args.horizon,
            frame_stride=args.frame_stride,
            init_from=args.init_from,
            branches=tuple(args.extra_data),
            action_deltas=args.action_deltas,
            residual=args.residual,
            action_maps=args.action_maps,
            noise=None if args.p_mean is None else (args.p_mean, args.p_std),
        )
    elif args.stage == "flowmap":
        result = commands.train_flowmap(opts, branches=tuple(args.extra_data))
    elif args.stage == "uq":
        result = commands.train_uq(opts, flow_steps=args.flow_steps, branches=tuple(args.extra_data))
    elif args.stage == "value":
        result = commands.train_value(
            opts, gamma=args.gamma, flow_steps=args.flow_steps, extra_data=tuple(args.extra_data)
        )
    elif args.stage in ("progress", "locator"):
        result = commands.train_progress(
            opts,
            flow_steps=args.flow_steps,
            stage=args.stage,
            extra_data=tuple(args.extra_data),
            captions=args.captions,
        )
    elif args.stage in train_probes.STAGES:
        result = train_probes.run(args, opts)
    elif args.stage == "policy":
        result = commands.train_policy(
            opts,
            extra=tuple(args.extra_data),
            pooling=args.pooling,
            target_map=args.target_map,
            init=args.init_from,
            target_aux=args.target_aux,
            init_module=args.init_module,
        )
    elif args.captions is not None:
        from vidplan_server.training.caption_stage import CaptionTrainConfig

        cfg = CaptionTrainConfig(robot_share=args.robot_share, codec_share=args.codec_share)
        result = commands.train_semantic_captions(opts, args.captions, frame_step=args.frame_step, cfg=cfg)
    else:
        result = commands.train_semantic(opts, frame_step=args.frame_step)
    return result


def register(groups) -> None:
    """Add ``vidplan train`` to the top-level subparsers ``groups``."""
    tr = groups.add_parser(
        "train",
        help="train the codec, world model, flow map and the UQ / value / semantic heads into a bundle",
        description="Train one stage into the checkpoint folder --out, in order: codec, then world (the EDM "
        "video model; needs the codec), then flowmap (distils world into a few-step flow map); then the heads: "
        "uq (on the flow map's own samples of a calibration dataset the world model never saw; also stores "
        "the heatmap colour basis), value (discounted return per frame, on the training data) and semantic "
        "(the instruction-frame dual encoder, on simulator episodes with target masks); policy (the robot's own "
        "language-conditioned behaviour-cloning policy with a flow-matching action head, on the successful nominal "
        "episodes of a train-split recording: the baseline and the proposer's source of candidates); progress (the "
        "distance of the hand to the instructed object in a predicted frame, read with the semantic encoder's map "
        "of the current frame; on a train-split simulator recording; needs flowmap and semantic); locator (where the "
        "instructed object is, in the robot's base frame, from the current frame and that map; same data). "
        "Shows a progress bar with the loss, evaluates on held-out episodes, saves resumable state "
        "in CKPT/training/, uses CUDA with bf16 autocast when present and the CPU otherwise.",
    )
    tr.add_argument(
        "stage",
        choices=(
            "codec",
            "world",
            "flowmap",
            "uq",
            "value",
            "semantic",
            "policy",
            "progress",
            "locator",
            *train_probes.STAGES,
        ),
        help="what to train (c3: C3's confidence probe, squbed: S-QUBED's probability map; both on the "
        "calibration data of uq)",
    )
    train_probes.add_arguments(tr)
    tr.add_argument(
        "--data",
        type=Path,
        required=True,
        help="dataset folder (vidplan sim record, or a DROID port); for uq a calibration dataset "
        "recorded apart from the world model's training data",
    )
    tr.add_argument("--out", type=Path, required=True, help="checkpoint folder; stages add their module to it")
    tr.add_argument(
        "--preset",
        choices=("tiny", "small", "base"),
        default="small",
        help="model size and schedule: tiny (tests), small (the bundled default, CPU), base (GPU) (default small)",
    )
    tr.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the preset's)")
    tr.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak learning rate after warm-up, decayed by a cosine to a tenth (default: the preset's, 1e-3 for "
        "small); lower it to fine-tune a warm start (--init-from) without unlearning it",
    )
    tr.add_argument("--resume", action="store_true", help="continue the run saved in --out/training/<stage>")
    tr.add_argument("--seed", type=int, default=0, help="seed of weights, batches and the held-out split (default 0)")
    tr.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if present)")
    tr.add_argument(
        "--held-out-fraction",
        type=fraction,
        default=0.1,
        help="share of episodes held out for evaluation (default 0.1)",
    )
    tr.add_argument(
        "--history",
        type=int,
        choices=range(1, 7),
        default=2,
        metavar="T",
        help="world: history frames the model sees, 1..6 (default 2)",
    )
    tr.add_argument(
        "--horizon", type=positive_int, default=5, metavar="H", help="world: predicted frames per chunk (default 5)"
    )
    tr.add_argument(
        "--frame-stride",
        type=positive_int,
        default=3,
        help="world: control steps per model frame (default 3, i.e. 5 Hz at 15 Hz control)",
    )
    tr.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="world: start from this bundle's world module (weights, architecture, action statistics) "
        "instead of random weights, e.g. to train the bundled model longer; --out must hold the same "
        "codec (default: random initialisation). policy: start from this bundle's policy (weights, "
        "vocabulary, normalisation); with --target-map it then starts as exactly that policy",
    )
    tr.add_argument(
        "--init-module",
        choices=("policy", "goal_policy"),
        default="policy",
        help="policy --target-map --init-from CKPT: which of CKPT's modules the goal policy starts from: policy "
        "(its map channel at zero, default) or goal_policy (as it is, to fine-tune the goal policy on new data)",
    )
    tr.add_argument(
        "--target-map",
        action="store_true",
        help="policy: train the goal policy (module goal_policy): it also takes the semantic encoder's relevance "
        "map of the instruction over each view (of the --init-from bundle, else of --out), so it goes for the "
        "object the map highlights, also where it does not know the words; the planner samples it as its "
        "goal samples (see models/policy.py)",
    )
    tr.add_argument(
        "--flow-steps",
        type=positive_int,
        default=1,
        metavar="K",
        help="uq, value, progress: flow-map steps of the samples the head learns from; use the planner's k (default 1)",
    )
    tr.add_argument(
        "--gamma",
        type=fraction,
        default=0.99,
        help="value: discount per control step of the Monte-Carlo return (default 0.99)",
    )
    tr.add_argument(
        "--extra-data",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="value, progress, locator: more recorded episode folders to train on (each split into "
        "training and held-out episodes like --data); never the data you evaluate on. "
        "policy: DAgger folders of `vidplan "
        "sim dagger` (every labelled step) or more recordings (their demonstrations), added to the "
        "training samples (a DAgger round: --resume --steps N). "
        "world, flowmap, uq: branch folders of `vidplan sim branches` (the planner's proposals executed "
        "from recorded states), one window per branch, shards split like episodes; for uq, branches "
        "of the calibration recording, which the world model never saw",
    )
    tr.add_argument(
        "--action-deltas",
        action="store_true",
        help="world: the network also embeds each frame's motion (its action minus the previous "
        "frame's); with --init-from, the new inputs start at zero weight (default: off, as bundled)",
    )
    tr.add_argument(
        "--residual",
        action="store_true",
        help="world: the denoiser models the change from the current frame instead of the whole frame "
        "(models/edm.py); a fresh run only (default: off, as bundled)",
    )
    tr.add_argument(
        "--action-maps",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="world: K spatial action-map channels, a learned map from each frame's pose to image positions "
        "(models/video_net.py); a fresh run only (default: 0, none)",
    )
    tr.add_argument(
        "--p-mean",
        type=float,
        default=None,
        help="world: mean of ln(sigma) of the training noise; with --p-std. Low noise teaches local denoising, where "
        "the noisy future already shows the answer and the actions do not matter; what the actions decide is learned "
        "at high noise (SVD's video fine-tuning uses 1.0 / 1.6 at sigma_data ~1). Also on --resume (default: the "
        "run's, EDM's -1.2 for a fresh one)",
    )
    tr.add_argument(
        "--p-std",
        type=positive_float,
        default=None,
        help="world: std of ln(sigma) of the training noise (default: 1.2)",
    )
    tr.add_argument(
        "--pooling",
        choices=("flatten", "spatial_softmax"),
        default=None,
        help="policy: how the vision features are pooled, flatten (the last feature map) or spatial_softmax "
        "keypoints (fewer weights after the CNN; see models/policy.py) (default: the preset's; small: "
        "spatial_softmax)",
    )
    tr.add_argument(
        "--target-aux",
        type=non_negative_float,
        default=None,
        help="policy: weight of the auxiliary loss that predicts where the instructed object is (from the "
        "recordings' simulator ground truth; training only, see models/policy.py); 0 turns it off "
        "(default: the preset's; small: 1)",
    )
    tr.add_argument(
        "--frame-step", type=positive_int, default=4, help="semantic: use every N-th step of each episode (default 4)"
    )
    tr.add_argument(
        "--captions",
        type=Path,
        default=None,
        metavar="DIR",
        help="semantic: train on the captioned renders of `vidplan sim captions` (every object and "
        "colour of the simulator, the CLIP stand-in's data); --data then only adds train-split robot "
        "frames (--robot-share of each batch) and their held-out episodes for evaluation. locator: train on "
        "the renders alone (a folder rendered with object positions; every 20th shard held out), reading the maps "
        "over the frames themselves, as the planner then computes them from the request's frames (--data only "
        "names the bundle's training set)",
    )
    tr.add_argument(
        "--robot-share",
        type=fraction,
        default=0.25,
        help="semantic with --captions: share of each batch drawn from --data's robot frames "
        "(0: renders only) (default 0.25)",
    )
    tr.add_argument(
        "--codec-share",
        type=fraction,
        default=0.35,
        help="semantic with --captions: share of each batch passed through the bundle's codec "
        "(encode + decode), as the planner scores decoded frames (default 0.35)",
    )
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)
