"""Semantic reward from a user's local CLIP or SigLIP checkpoint (a Hugging Face ``transformers`` folder with
``config.json``, weights and tokenizer files, as ``save_pretrained`` writes them). Nothing is downloaded.

Per-patch relevance follows MaskCLIP (Zhou et al. 2022): the pooling step that turns patch tokens into
the image embedding is applied to every patch token on its own, so patches land in the joint space.

- CLIP: patch tokens -> ``post_layernorm`` -> ``visual_projection``.
- SigLIP: its attention-pooling head with the attention fixed on the patch itself (value and output
  projections, then the head's residual MLP).

Relevance is the patch-text cosine similarity min-max normalised per image to [0, 1] (raw CLIP patch
similarities live in a narrow band that differs between checkpoints).

``open_clip`` checkpoints are not supported: the ``open_clip_torch`` package depends on torchvision, which
has no CPU build here. Convert them to ``transformers`` format first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from vidplan_server.models.checkpoint import CheckpointError
from vidplan_server.models.semantic_backend import SemanticBackend, SemanticScores, relevance_centroid

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFDualEncoder(SemanticBackend):
    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{folder}: no config.json; expected a transformers CLIP or SigLIP folder")
        try:
            kind = json.loads(config_file.read_text()).get("model_type", "")
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
        if kind not in ("clip", "siglip"):
            raise CheckpointError(f"{config_file}: model_type {kind!r} is not supported (use 'clip' or 'siglip')")
        try:
            import transformers
        except ImportError as exc:  # an optional dependency: pip install 'vidplan[clip]'
            raise CheckpointError("loading a CLIP/SigLIP folder needs `pip install transformers`") from exc
        cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
        try:
            self.model = cls.from_pretrained(str(folder), local_files_only=True).to(device).eval()
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder}: cannot load the {kind} model or tokenizer ({exc})") from exc
        self.model.requires_grad_(False)
        self.kind = kind
        vision = self.model.config.vision_config
        self.image_size = (vision.image_size, vision.image_size)
        self.patch = vision.patch_size
        mean, std = self._normalisation(folder, kind)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @staticmethod
    def _normalisation(folder: Path, kind: str) -> tuple[tuple, tuple]:
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            if "image_mean" in cfg and "image_std" in cfg:
                return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
        return (CLIP_MEAN, CLIP_STD) if kind == "clip" else ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        padding = "max_length" if self.kind == "siglip" else True  # SigLIP was trained on max-length padding
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(texts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt").to(
            self.device
        )
        out = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
        emb = out.pooler_output
        if self.kind == "clip":
            emb = self.model.text_projection(emb)
        return F.normalize(emb, dim=-1)

    def _patches(self, hidden: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, P, Dv) -> embeddings (N, P, D) in the joint space (MaskCLIP)."""
        vm = self.model.vision_model
        if self.kind == "clip":
            return self.model.visual_projection(vm.post_layernorm(hidden[:, 1:]))
        head = vm.head
        attn = head.attention
        D = hidden.shape[-1]
        v = F.linear(hidden, attn.in_proj_weight[2 * D :], attn.in_proj_bias[2 * D :])
        x = attn.out_proj(v)
        return x + head.mlp(head.layernorm(x))

    @torch.no_grad()
    def score(self, images: torch.Tensor, text: torch.Tensor) -> SemanticScores:
        x = F.interpolate(
            images.float().to(self.device), size=self.image_size, mode="bicubic", align_corners=False
        ).clamp(0, 1)
        out = self.model.vision_model(pixel_values=(x - self.mean) / self.std)
        glob = out.pooler_output
        if self.kind == "clip":
            glob = self.model.visual_projection(glob)
        glob = F.normalize(glob, dim=-1)
        patches = F.normalize(self._patches(out.last_hidden_state), dim=-1)
        g = self.image_size[0] // self.patch
        sim = torch.einsum("npd,nd->np", patches, text).reshape(len(x), g, g)
        lo = sim.flatten(1).min(1).values[:, None, None]
        hi = sim.flatten(1).max(1).values[:, None, None]
        relevance = (sim - lo) / (hi - lo).clamp(min=1e-6)
        return SemanticScores((glob * text).sum(-1), relevance, relevance_centroid(relevance))
