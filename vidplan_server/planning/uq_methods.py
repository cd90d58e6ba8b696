"""Which uncertainty weights the planner's selection score: ``uq_method`` (``PlannerConfig`` and per request).

- ``bins`` (default): the 30-bin UQ head's normalised entropy (``models/heads.py``).
- ``c3-fsc`` / ``c3-cs``: C3's probe (``models/c3_probe.py``), uncertainty ``1 - q`` with q = P(|latent error| <=
  eps) at the score's ``confidence_eps`` (FSC: at its own trained eps), from the backbone features kept by a
  forward hook during the proposals' rollout (no extra network evaluation).
- ``squbed``: S-QUBED (``models/squbed.py``), ``1 - P(frame error <= tau)`` from its calibrated total entropy,
  one value per frame broadcast over the frame's latents; n x m extra rollouts per proposal (one batch).

What changes with the method: the weight ``w(h_t)`` of the selection score, the reported per-frame uncertainty,
the confidence and the heatmaps. What does not (decided): the refinement objective keeps the bins head's
entropy (it must be differentiable through the flow map, which S-QUBED's sampling is not, and one
differentiable head keeps refinement's cost fixed), and ``expected_error`` stays the bins head's, the only
method with an error distribution over the whole range. ``bins`` stays the default until another method wins
the closed-loop benchmark (``vidplan eval closed-loop``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vidplan_server.models.c3_probe import C3Probe, FeatureTap, load_c3_probe
from vidplan_server.models.checkpoint import read_manifest
from vidplan_server.models.squbed import SqubedCalibration, estimate, load_squbed
from vidplan_server.models.world_model import WorldModel
from vidplan_server.planning.types import UQ_METHODS

__all__ = ["UQ_METHODS", "UQSources", "bundle_methods"]

#: The bundle module each method other than ``bins`` needs.
MODULES = {"c3-fsc": "c3_fsc", "c3-cs": "c3_cs", "squbed": "squbed"}


def bundle_methods(ckpt: str | Path) -> tuple[str, ...]:
    """The methods the bundle at ``ckpt`` offers, read from its manifest alone (no weights loaded): what
    ``UQSources.load(ckpt).offered`` gives, for a check before the planner loads (``vidplan serve --uq-method``)."""
    modules = read_manifest(ckpt)["modules"]
    return (
        "bins",
        *sorted(m for m, module in MODULES.items() if module in modules and m != "squbed"),
        *(("squbed",) if MODULES["squbed"] in modules else ()),
    )


@dataclass
class UQSources:
    """The non-default uncertainty methods a bundle offers (``bins`` is always offered)."""

    probes: dict[str, C3Probe] = field(default_factory=dict)  # "c3-fsc" / "c3-cs" -> probe
    squbed: SqubedCalibration | None = None

    @classmethod
    def load(cls, ckpt: str | Path, device: str | torch.device = "cpu") -> UQSources:
        modules = read_manifest(ckpt)["modules"]
        probes = {f"c3-{m}": load_c3_probe(ckpt, m).to(device) for m in ("fsc", "cs") if f"c3_{m}" in modules}
        return cls(probes, load_squbed(ckpt) if "squbed" in modules else None)

    @property
    def offered(self) -> tuple[str, ...]:
        return ("bins", *sorted(self.probes), *(("squbed",) if self.squbed is not None else ()))

    @staticmethod
    def needs_features(method: str) -> bool:
        return method.startswith("c3-")

    def tap(self, world: WorldModel, method: str):
        """A :class:`FeatureTap` to hold around the rollout when ``method`` is a C3 probe, else None."""
        return FeatureTap(world.flow_map) if self.needs_features(method) else None

    @torch.no_grad()
    def maps(
        self,
        method: str,
        world: WorldModel,
        pred: torch.Tensor,
        history: torch.Tensor,
        knots: torch.Tensor,
        eps: float,
        tap: FeatureTap | None = None,
        noise: torch.Tensor | None = None,
        steps: int = 1,
        seed: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncertainty in [0, 1], P(|err| <= eps)), each like ``pred`` (B, H, C, V*h, w), for ``method`` (not bins).

        history (B, T, ...) or (1, T, ...); knots (B, H, 7) raw. C3 reads ``tap`` (kept around the rollout of
        exactly ``pred``); without one it rolls ``knots`` out again from ``noise`` with a tap (the refined
        rollout, whose features were not kept)."""
        history = history.expand(len(pred), *history.shape[1:])
        if method in self.probes:
            if tap is None or tap.features is None:
                with FeatureTap(world.flow_map) as tap:
                    world.rollout(history, knots, "flow", steps, noise=noise)
            probe = self.probes[method]
            q = torch.sigmoid(probe(tap.features, tap.embedding, eps)).float()
            return 1.0 - q, q
        if method == "squbed" and self.squbed is not None:
            cfg = self.squbed.config.squbed
            dec = estimate(world, history, knots, cfg, seed=seed)
            ok = self.squbed(dec.total).to(pred.device)  # (B, H)
            ok = ok[:, :, None, None, None].expand(pred.shape).float()
            return 1.0 - ok, ok
        raise ValueError(f"uq_method {method!r} is not offered by this bundle (offered: {', '.join(self.offered)})")
