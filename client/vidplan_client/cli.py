"""``vidplan-client``: talk to a VidPlan server from a terminal (operators, bring-up, smoke tests).

    vidplan-client --target robot-gpu:50051 info
    vidplan-client health
    vidplan-client plan --frames ext1.png ext2.png wrist.png --state-json state.json \\
        --instruction "put the red cube in the tray"
    vidplan-client plan ... --mode policy     # the bundle's policy alone: the baseline, same API
    vidplan-client plan ... --uq-method c3-cs # another uncertainty weights the selection (`info`: uq_methods)

Exit status: 0 on success, 1 when the server is not SERVING (``health``), 2 on an error (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import cv2
import grpc
import numpy as np
from google.protobuf import json_format

from vidplan_client.channel import ClientConfig
from vidplan_client.client import VidPlanClient
from vidplan_client.convert import (
    CAMERA_NAMES,
    ENCODINGS,
    MODES,
    UQ_METHODS,
    PlanFailed,
    WireError,
    decode_image,
    make_observation,
    make_request,
    make_state,
    plan_options,
    response_to_plan,
)


class CliError(Exception):
    """A problem with the operator's input; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    from vidplan_client import __version__

    parser = argparse.ArgumentParser(
        prog="vidplan-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vidplan-client {__version__}")
    parser.add_argument(
        "--target",
        default=os.environ.get("VIDPLAN_TARGET", "localhost:50051"),
        help="server address host:port (default: $VIDPLAN_TARGET or localhost:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("VIDPLAN_TOKEN"),
        help="bearer token sent as `authorization: Bearer <token>` (default: $VIDPLAN_TOKEN; "
        "prefer the variable, a flag shows up in the shell history)",
    )
    parser.add_argument("--root-cert", metavar="PEM", help="use TLS, trusting this PEM root certificate")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="deadline of the call in seconds, retries included (default: 5 for info/health, "
        "10 for plan: the first plan after start-up may compile kernels)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="extra attempts when the server is UNAVAILABLE, with exponential backoff (0-4, default 3)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("info", help="print the server's model, cameras, horizon and safety limits as JSON")

    health = sub.add_parser("health", help="grpc.health.v1 check; exit 0 when SERVING, 1 otherwise")
    health.add_argument("--service", default="", help='service to check ("" = the whole server, or vidplan.v1.VidPlan)')

    plan = sub.add_parser(
        "plan",
        help="send one observation and print the returned action chunk",
        description="Send one observation (three camera images + robot state) and print the plan.",
    )
    plan.add_argument(
        "--frames",
        nargs=3,
        required=True,
        type=Path,
        metavar=("EXT1", "EXT2", "WRIST"),
        help="image files (PNG/JPEG, any size) of " + ", ".join(CAMERA_NAMES) + ", in that order",
    )
    plan.add_argument(
        "--state-json",
        required=True,
        metavar="JSON|FILE",
        help='robot state as JSON text or a file holding it: {"joint_position": [7 rad], '
        '"cartesian_position": [x, y, z m, roll, pitch, yaw rad], "gripper_position": 0..1}; '
        "DROID's `joint_positions` is accepted too",
    )
    plan.add_argument("--instruction", required=True, help='the task in words, e.g. "put the red cube in the tray"')
    plan.add_argument("--session-id", default="", help="session id (default: a fresh random one)")
    plan.add_argument("--num-proposals", type=int, help="candidate chunks to roll out (default: server's)")
    plan.add_argument(
        "--refine-iters", type=int, help="gradient refinement steps, 0 = selection only (default: server's)"
    )
    plan.add_argument("--flow-steps", type=int, help="network evaluations per rollout (default: server's)")
    plan.add_argument("--deadline-ms", type=int, help="planner's own time budget in ms (default: server's)")
    plan.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="plan",
        help="plan: VidPlan (default); policy: the server bundle's policy alone, the baseline to "
        "compare against (no world model; only when `info` lists PLAN_MODE_POLICY in modes)",
    )
    plan.add_argument(
        "--uq-method",
        choices=list(UQ_METHODS),
        default=None,
        help="the uncertainty that weights the selection score and the reported uncertainty: bins (the 30-bin "
        "head), c3-fsc / c3-cs (C3's probes), squbed (S-QUBED; slow); only one `info` lists in uq_methods "
        "(default: the server's, `vidplan serve --uq-method`)",
    )
    plan.add_argument(
        "--policy-samples",
        type=int,
        metavar="K",
        help="proposals sampled from the bundle's policy, 0 = none (default: server's)",
    )
    plan.add_argument(
        "--policy-perturbations",
        type=int,
        metavar="P",
        help="perturbed copies of the policy samples (default: server's)",
    )
    plan.add_argument(
        "--seed", type=int, default=0, help="planner seed; same input + same seed = same plan (default 0)"
    )
    plan.add_argument(
        "--encoding",
        choices=[e for e in ENCODINGS if e != "raw"],
        default="jpeg",
        help="how the images travel (default jpeg)",
    )
    plan.add_argument(
        "--heatmaps-out",
        type=Path,
        metavar="DIR",
        help="also ask for predicted frames and uncertainty heatmaps and write them as PNGs into DIR",
    )
    plan.add_argument("--json", action="store_true", help="print the whole response as JSON instead of a table")
    return parser


def _config(args: argparse.Namespace, default_timeout_s: float) -> ClientConfig:
    if not 0 <= args.retries <= 4:
        raise CliError(f"--retries must be 0..4 (gRPC allows 5 attempts), got {args.retries}")
    timeout = args.timeout if args.timeout is not None else default_timeout_s
    if timeout <= 0:
        raise CliError(f"--timeout must be > 0, got {timeout}")
    if args.root_cert and not Path(args.root_cert).is_file():
        raise CliError(f"--root-cert {args.root_cert}: no such file")
    return ClientConfig(
        target=args.target,
        token=args.token,
        root_cert_path=args.root_cert,
        tls=args.tls,
        plan_timeout_s=timeout,
        info_timeout_s=timeout,
        max_attempts=args.retries + 1,
    )


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CliError(f"--frames: {path} does not exist")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CliError(f"--frames: {path} is not an image opencv can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_state(text: str):
    source = "--state-json"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise CliError(f"--state-json: {text!r} is neither JSON text nor an existing file")
        text, source = path.read_text(), f"--state-json {path}"
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{source}: not valid JSON ({e})") from e
    joints = state.get("joint_position", state.get("joint_positions"))
    if joints is None or "cartesian_position" not in state or "gripper_position" not in state:
        raise CliError(f"{source}: needs joint_position, cartesian_position and gripper_position")
    try:
        return make_state(joints, state["cartesian_position"], state["gripper_position"])
    except (WireError, TypeError, ValueError) as e:
        raise CliError(f"{source}: {e}") from e


def _print_plan(response) -> None:
    plan = response_to_plan(response)
    print(
        f"sequence {plan.sequence}  model {plan.model_version or '?'}  confidence {plan.confidence:.3f}  "
        f"refined {plan.refined}  deadline_hit {plan.deadline_hit}"
    )
    print(f"stamp: t0 {plan.t0_s:.3f} s, row k at t0 + ({plan.i0} + k) * {plan.dt_s:.4f} s")
    print(f"{'k':>3} {'x m':>8} {'y m':>8} {'z m':>8} {'roll':>8} {'pitch':>8} {'yaw':>8} {'grip':>6}")
    for k, row in enumerate(plan.chunk):
        print(f"{k:>3} " + " ".join(f"{v:8.4f}" for v in row[:6]) + f" {row[6]:6.3f}")
    if plan.notes:
        print("notes: " + "; ".join(plan.notes))
    if plan.timings_ms:
        print("server ms: " + ", ".join(f"{k} {v:.1f}" for k, v in plan.timings_ms.items()))


def _write_images(response, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for kind, images in (("predicted", response.predicted_frames), ("heatmap", response.heatmaps)):
        for item in images:
            rgb = decode_image(item.image)
            path = out / f"{kind}_f{item.frame}_{item.image.camera}.png"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            count += 1
    return count


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        with VidPlanClient(_config(args, 5.0)) as client:
            print(json_format.MessageToJson(client.info(), preserving_proto_field_name=True))
        return 0
    if args.command == "health":
        with VidPlanClient(_config(args, 5.0)) as client:
            status = client.health(args.service)
        print(status)
        return 0 if status == "SERVING" else 1
    # plan
    images = dict(zip(CAMERA_NAMES, (_read_image(p) for p in args.frames), strict=True))
    state = _read_state(args.state_json)
    try:
        options = plan_options(
            num_proposals=args.num_proposals,
            refine_iters=args.refine_iters,
            flow_steps=args.flow_steps,
            deadline_ms=args.deadline_ms,
            seed=args.seed,
            return_heatmaps=args.heatmaps_out is not None,
            policy_samples=args.policy_samples,
            policy_perturbations=args.policy_perturbations,
            mode=args.mode,
            uq_method=args.uq_method,
        )
        observation = make_observation(images, state, time.time(), encoding=args.encoding)
        request = make_request(args.session_id or uuid.uuid4().hex, 1, args.instruction, observation, options=options)
    except WireError as e:
        raise CliError(str(e)) from e
    with VidPlanClient(_config(args, 10.0)) as client:
        response = client.plan(request)
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
    else:
        _print_plan(response)
    if args.heatmaps_out is not None:
        print(f"wrote {_write_images(response, args.heatmaps_out)} images to {args.heatmaps_out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CliError as e:
        print(f"vidplan-client: error: {e}", file=sys.stderr)
    except grpc.RpcError as e:
        print(f"vidplan-client: error: server {args.target} answered {e.code().name}: {e.details()}", file=sys.stderr)
    except (PlanFailed, WireError) as e:
        print(f"vidplan-client: error: unusable response: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
