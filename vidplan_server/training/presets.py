"""Model sizes and training schedules per stage: ``tiny`` (tests, seconds), ``small`` (the bundled
default, trained on 2 CPU cores) and ``base`` (a GPU run). ``--steps`` overrides the schedule length."""

from __future__ import annotations

from dataclasses import dataclass

from vidplan_server.models.codec import CodecConfig
from vidplan_server.models.heads import HeadNetConfig
from vidplan_server.models.policy import PolicyConfig
from vidplan_server.models.progress import ProgressHeadConfig
from vidplan_server.models.semantic import SemanticConfig
from vidplan_server.models.video_net import VideoNetConfig
from vidplan_server.training.loop import LoopConfig

PRESETS = ("tiny", "small", "base")


@dataclass(frozen=True)
class CodecPreset:
    model: CodecConfig
    loop: LoopConfig


@dataclass(frozen=True)
class WorldPreset:
    net: VideoNetConfig
    loop: LoopConfig


CODEC = {
    "tiny": CodecPreset(
        CodecConfig(block_out_channels=(8, 8, 16), norm_num_groups=4),
        LoopConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": CodecPreset(
        CodecConfig(block_out_channels=(16, 32, 64), norm_num_groups=8),
        LoopConfig(steps=700, batch_size=16, lr=1e-3, warmup_steps=50, eval_every=200, save_every=200),
    ),
    "base": CodecPreset(
        CodecConfig(block_out_channels=(32, 64, 128), layers_per_block=2, norm_num_groups=16),
        LoopConfig(steps=20000, batch_size=64, lr=5e-4, warmup_steps=500, eval_every=1000, save_every=1000),
    ),
}

WORLD = {
    "tiny": WorldPreset(
        VideoNetConfig(channels=(16, 16, 32), attention_heads=2, embed_dim=32),
        LoopConfig(steps=20, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": WorldPreset(
        VideoNetConfig(channels=(64, 96, 128), attention_heads=4, embed_dim=128),
        LoopConfig(
            steps=3000, batch_size=8, lr=5e-4, warmup_steps=100, ema_decay=0.999, eval_every=500, save_every=250
        ),
    ),
    "base": WorldPreset(
        VideoNetConfig(channels=(128, 256, 384), attention_heads=8, embed_dim=256, blocks_per_level=2),
        LoopConfig(
            steps=100000, batch_size=64, lr=2e-4, warmup_steps=1000, ema_decay=0.9999, eval_every=5000, save_every=2500
        ),
    ),
}

# Flow-map fine-tuning (Algorithm 2). Table 2 of the paper: lr 5e-6, 16 flow + 8 distill samples per
# batch, for a pretrained billion-parameter SVD model. Our models are ~1000x smaller and trained for
# minutes on 2 CPU cores, so the learning rate is scaled up (a small model fine-tunes stably at 1e-4)
# and, for `small`, the batch is halved to 8 flow + 4 distill samples; the 2:1 split is the paper's.
FLOWMAP = {
    "tiny": LoopConfig(steps=20, batch_size=6, lr=1e-3, warmup_steps=2, eval_every=10, save_every=10),
    "small": LoopConfig(
        steps=800, batch_size=12, lr=1e-4, warmup_steps=50, ema_decay=0.999, eval_every=400, save_every=200
    ),
    "base": LoopConfig(
        steps=20000, batch_size=24, lr=2e-5, warmup_steps=500, ema_decay=0.9999, eval_every=2500, save_every=1000
    ),
}


@dataclass(frozen=True)
class HeadPreset:
    net: HeadNetConfig
    loop: LoopConfig


# UQ and value heads (App. A.6: 2-level U-Nets, attention in the bottleneck; the paper's bottleneck is
# 512 channels for SVD latents, ours 64 for 4 x 48 x 16 latents on CPU).
UQ = {
    "tiny": HeadPreset(
        HeadNetConfig(channels=(8, 8, 16), attention_heads=2, embed_dim=8),
        LoopConfig(steps=20, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": HeadPreset(
        HeadNetConfig(channels=(32, 48, 64)),
        LoopConfig(steps=1200, batch_size=16, lr=1e-3, warmup_steps=50, eval_every=300, save_every=200),
    ),
    "base": HeadPreset(
        HeadNetConfig(channels=(128, 256, 512), attention_heads=8, embed_dim=128),
        LoopConfig(steps=20000, batch_size=32, lr=3e-4, warmup_steps=500, eval_every=2000, save_every=1000),
    ),
}
VALUE = {
    "tiny": HeadPreset(
        HeadNetConfig(channels=(8, 8, 16), attention_heads=2, embed_dim=8),
        LoopConfig(steps=20, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": HeadPreset(
        HeadNetConfig(channels=(24, 32, 48)),
        LoopConfig(
            steps=1500, batch_size=16, lr=1e-3, warmup_steps=50, weight_decay=0.05, eval_every=500, save_every=250
        ),
    ),
    "base": HeadPreset(
        HeadNetConfig(channels=(128, 256, 512), attention_heads=8, embed_dim=128),
        LoopConfig(
            steps=20000, batch_size=32, lr=3e-4, warmup_steps=500, weight_decay=0.01, eval_every=2000, save_every=1000
        ),
    ),
}


@dataclass(frozen=True)
class ProgressPreset:
    model: ProgressHeadConfig
    loop: LoopConfig


# Progress head (models/progress.py): a small conv encoder per view and an MLP.
PROGRESS = {
    "tiny": ProgressPreset(
        ProgressHeadConfig(channels=(8, 8, 8), hidden=16),
        LoopConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": ProgressPreset(
        ProgressHeadConfig(),
        LoopConfig(
            steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, weight_decay=0.01, eval_every=500, save_every=250
        ),
    ),
    "base": ProgressPreset(
        ProgressHeadConfig(channels=(64, 128, 256), hidden=512),
        LoopConfig(
            steps=20000, batch_size=128, lr=3e-4, warmup_steps=500, weight_decay=0.01, eval_every=2000, save_every=1000
        ),
    ),
}


@dataclass(frozen=True)
class SemanticPreset:
    model: SemanticConfig
    loop: LoopConfig


SEMANTIC = {
    "tiny": SemanticPreset(
        SemanticConfig(channels=(8, 8), dim=16),
        LoopConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    "small": SemanticPreset(
        SemanticConfig(channels=(32, 64), dim=64),
        LoopConfig(
            steps=4000, batch_size=64, lr=2e-3, warmup_steps=50, weight_decay=0.01, eval_every=1000, save_every=500
        ),
    ),
    "base": SemanticPreset(
        SemanticConfig(channels=(64, 128), dim=128),
        LoopConfig(
            steps=20000, batch_size=256, lr=1e-3, warmup_steps=500, weight_decay=0.01, eval_every=2000, save_every=1000
        ),
    ),
}


@dataclass(frozen=True)
class PolicyPreset:
    model: PolicyConfig
    loop: LoopConfig


POLICY = {
    "tiny": PolicyPreset(
        PolicyConfig(channels=(8, 8, 16, 16), text_dim=16, feature_dim=32, hidden=64, flow_steps=4),
        LoopConfig(steps=20, batch_size=8, lr=2e-3, warmup_steps=2, eval_every=10, save_every=10),
    ),
    # 2 CPU cores: ~0.08 s per step of 32 samples (three 64x64 views each) when the machine is otherwise idle.
    # Spatial-softmax vision and the auxiliary where-is-the-object loss: the bundled policy's recipe (README).
    "small": PolicyPreset(
        PolicyConfig(pooling="spatial_softmax", target_aux=1.0),
        LoopConfig(
            steps=7000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=200,
            weight_decay=1e-4,
            ema_decay=0.999,
            eval_every=500,
            save_every=250,
        ),
    ),
    "base": PolicyPreset(
        PolicyConfig(
            channels=(64, 128, 192, 256), feature_dim=512, hidden=1024, pooling="spatial_softmax", target_aux=1.0
        ),
        LoopConfig(
            steps=60000,
            batch_size=256,
            lr=3e-4,
            warmup_steps=1000,
            weight_decay=1e-4,
            ema_decay=0.9999,
            eval_every=5000,
            save_every=2500,
        ),
    ),
}
