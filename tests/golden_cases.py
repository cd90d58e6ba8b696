"""Golden regression cases: fixed inputs and the outputs the bundled checkpoint gives for them.

Each case stores its inputs and its outputs in ``tests/artifacts/golden/<case>.safetensors`` (small: the largest
is about 0.3 MB). The tests recompute the outputs from the stored inputs and compare them within float noise;
``python scripts/make_golden.py`` regenerates the files on purpose (after a change that is meant to move the
numbers), and the failing test says so. CPU only, one process: a case runs in well under a second once the
bundle is loaded.

Cases:

- ``edm``: the EDM preconditioning (c_skip, c_out, c_in, c_noise) at six noise levels, one denoiser call, and a
  3-level Heun sample (5 network evaluations) of the bundled world model;
- ``flow_map``: 1-, 2- and 4-step flow-map samples of the bundled flow map from one noise draw;
- ``heads``: the UQ head's normalised entropy and expected error, the value head's per-frame logits and the
  semantic encoder's frame score, relevance map and centroid on fixed latents and images;
- ``plan``: a seeded ``Planner.plan`` (12 proposals: 6 policy samples and 6 basis directions, 3 refinement
  steps) at step 12 of a recorded episode: winner, proposal scores, the returned chunk and its uncertainty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "golden"
REGENERATE = "python scripts/make_golden.py"
CASES = ("edm", "flow_map", "heads", "plan")
INSTRUCTION = "put the red cube in the tray"
PLAN_SEED = 11


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32)


# ---------------------------------------------------------------------------------------- inputs
def make_inputs(case: str) -> dict[str, torch.Tensor]:
    """The fixed inputs of a case (only ``make_golden.py`` calls this; the tests read them from the artifact)."""
    from vidplan_server.models.world_model import WorldModel

    g = torch.Generator().manual_seed(2024)
    if case == "plan":
        return _plan_inputs()
    world = WorldModel.load()
    T, H = world.history, world.horizon
    C, hh, ww = 4, 48, 16  # the bundled codec's latent: 4 channels, three 16x16 views stacked vertically
    history = 0.8 * _randn(g, 1, T, C, hh, ww)
    actions = (0.5 * _randn(g, 1, H, 7)).clamp(-1, 1)  # normalised action space
    if case == "edm":
        return {
            "sigma": torch.tensor([0.002, 0.05, 0.5, 1.0, 5.0, 80.0]),
            "history": history,
            "actions": actions,
            "x": _randn(g, 1, H, C, hh, ww),
            "noise": _randn(g, 1, H, C, hh, ww),
        }
    if case == "flow_map":
        return {"history": history, "actions": actions, "noise": _randn(g, 1, H, C, hh, ww)}
    if case == "heads":
        images = torch.rand((2, 3, 64, 64), generator=g)
        images = torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)  # smooth, like a render
        return {
            "history": history,
            "pred": history[:, -1:].expand(1, H, C, hh, ww) + 0.3 * _randn(g, 1, H, C, hh, ww),
            "images": images,
        }
    raise KeyError(case)


def _plan_inputs() -> dict[str, torch.Tensor]:
    from dataclasses import replace

    from vidplan_server.planning.offline import request_from_episode
    from vidplan_server.sim.episode import EpisodeConfig, run_episode

    episode = run_episode(3, replace(EpisodeConfig(), max_steps=24, imperfect_fraction=0.0))
    req = request_from_episode(episode, 12, 2, 3)
    s = req.state
    return {
        "history": torch.from_numpy(np.ascontiguousarray(req.history)),  # (T, V, 64, 64, 3) uint8
        "joint_position": torch.from_numpy(np.asarray(s.joint_position, dtype=np.float64)),
        "cartesian_position": torch.from_numpy(np.asarray(s.cartesian_position, dtype=np.float64)),
        "gripper_position": torch.tensor([float(s.gripper_position)], dtype=torch.float64),
    }


# ---------------------------------------------------------------------------------------- outputs
def compute(case: str, inputs: dict[str, torch.Tensor], models: dict) -> dict[str, torch.Tensor]:
    """The outputs of a case for ``inputs`` with the loaded ``models`` (see :func:`load_models`)."""
    if case == "plan":
        return _plan(inputs, models["planner"])  # refinement needs gradients
    with torch.no_grad():
        return _compute_models(case, inputs, models)


def _compute_models(case: str, inputs: dict[str, torch.Tensor], models: dict) -> dict[str, torch.Tensor]:
    if case == "edm":
        from vidplan_server.models.edm import heun_sample

        den = models["world"].denoiser
        c_skip, c_out, c_in, c_noise = den.precondition(inputs["sigma"])
        x1_hat, eps_hat = den(inputs["x"], torch.tensor([1.0]), inputs["history"], inputs["actions"])
        heun = heun_sample(den, inputs["history"], inputs["actions"], steps=3, noise=inputs["noise"])
        return {
            "c_skip": c_skip,
            "c_out": c_out,
            "c_in": c_in,
            "c_noise": c_noise,
            "x1_hat": x1_hat,
            "eps_hat": eps_hat,
            "heun_3": heun,
        }
    if case == "flow_map":
        fm = models["world"].flow_map
        return {
            f"sample_{k}": fm.sample(inputs["history"], inputs["actions"], steps=k, noise=inputs["noise"])
            for k in (1, 2, 4)
        }
    if case == "heads":
        from vidplan_server.models.bins import ERROR_BINS

        logits = models["uq"](inputs["pred"], inputs["history"])
        semantic = models["semantic"]
        text = semantic.encode_text([INSTRUCTION]).expand(len(inputs["images"]), -1)
        scores = semantic.score(inputs["images"], text)
        return {
            "uq_entropy": ERROR_BINS.normalized_entropy(logits),
            "uq_expected": ERROR_BINS.expected(logits),
            "value_logits": models["value"](inputs["pred"]),
            "semantic_frame": scores.frame,
            "semantic_relevance": scores.relevance,
            "semantic_centroid": scores.centroid,
        }
    raise KeyError(case)


def _plan(inputs: dict[str, torch.Tensor], planner) -> dict[str, torch.Tensor]:
    from vidplan_server.planning.types import PlanOptions, PlanRequest, RobotState

    req = PlanRequest(
        INSTRUCTION,
        inputs["history"].numpy(),
        RobotState(
            inputs["joint_position"].numpy(), inputs["cartesian_position"].numpy(), float(inputs["gripper_position"][0])
        ),
        options=PlanOptions(num_proposals=12, policy_samples=6, refine_iters=3, flow_steps=1, seed=PLAN_SEED),
    )
    r = planner.plan(req)
    return {
        "winner": torch.tensor([r.winner]),
        "refined": torch.tensor([int(r.refined)]),
        "proposal_scores": torch.from_numpy(r.proposal_scores),
        "actions": torch.from_numpy(r.actions),
        "uncertainty": torch.from_numpy(r.uncertainty),
        "refine_objective": torch.tensor([s.objective for s in r.refinement], dtype=torch.float64),
    }


def load_models(case: str) -> dict:
    """What a case runs on: parts of the bundled checkpoint, on the CPU, in eval mode."""
    from vidplan_server.models.checkpoint import DEFAULT_CHECKPOINT
    from vidplan_server.models.heads import load_uq_head, load_value_head
    from vidplan_server.models.semantic import load_semantic
    from vidplan_server.models.world_model import WorldModel

    if case == "plan":
        from vidplan_server.planning.planner import Planner

        return {"planner": Planner.load()}
    if case == "heads":
        return {
            "uq": load_uq_head(DEFAULT_CHECKPOINT).eval(),
            "value": load_value_head(DEFAULT_CHECKPOINT).eval(),
            "semantic": load_semantic(),
        }
    return {"world": WorldModel.load()}


# ---------------------------------------------------------------------------------------- files
def path(case: str) -> Path:
    return ARTIFACTS / f"{case}.safetensors"


def save(case: str, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    tensors = {f"input.{k}": v.contiguous() for k, v in inputs.items()}
    tensors.update({f"output.{k}": v.contiguous() for k, v in outputs.items()})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path(case)), metadata={"regenerate": REGENERATE, "torch": torch.__version__})
    return path(case)


def load(case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path(case)))
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    outputs = {k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")}
    return inputs, outputs


#: Tolerance per output, relative to its largest magnitude: 1e-5 for one network evaluation; a chain of them
#: (EDM Heun from sigma = 80, refinement through the flow map) amplifies the float noise of a different thread
#: count (measured: 3e-4 on the Heun sample with 2 threads instead of 1), so those get 1e-4 (the plan test too).
RELATIVE_TOLERANCE = {"heun_3": 1e-4}


def mismatches(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rel: float = 1e-5) -> list[str]:
    """Outputs that differ from the golden ones by more than float noise: ``rel`` (or the output's entry in
    :data:`RELATIVE_TOLERANCE`) times the largest magnitude of the expected tensor (at least 1), elementwise;
    integer outputs must be equal."""
    bad = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            bad.append(f"{name}: shape {None if got is None else tuple(got.shape)}, golden {tuple(want.shape)}")
            continue
        if not want.is_floating_point():
            if not torch.equal(got.to(want.dtype), want):
                bad.append(f"{name}: {got.tolist()} != golden {want.tolist()}")
            continue
        got, want = got.double(), want.double()
        atol = RELATIVE_TOLERANCE.get(name, rel) * max(1.0, float(want.abs().max()))
        err = float((got - want).abs().max())
        if not err <= atol:
            bad.append(f"{name}: max abs difference {err:.3g} > {atol:.3g}")
    return bad


def failure_message(case: str, bad: list[str]) -> str:
    return (
        f"golden case {case!r} changed ({path(case).relative_to(ARTIFACTS.parents[2])}):\n  "
        + "\n  ".join(bad)
        + f"\nIf the change is intended (a new checkpoint, a deliberate numerics change), regenerate the "
        f"artifacts with `{REGENERATE}` and commit tests/artifacts/golden/; otherwise it is a regression."
    )
