"""``vidplan sim captions``: captioned renders of the simulated scene, no robot actions, for the semantic encoder.

Real VidPlan scores with a CLIP that saw the internet, objects the robot data never showed included. Our
stand-in sees every object and colour of the simulator -- ``train`` and ``ood`` ones -- in these renders,
while the policy, the world model and the value head only see ``train``-split robot episodes.

A scene is a task scene of :func:`~vidplan_server.sim.tasks.sample_task` (1-6 objects, a container, a
jittered camera rig), drawn from the ``ood`` split (a novel target, other objects from every split) with
odds ``ood_scene_fraction`` and from the ``train`` split otherwise; every object of it is captioned, not only
the task's target. Decided: 0.75, which puts each ``ood`` colour on about 10 % of the objects against 15 %
for each ``train`` colour; with even odds it was 7 % against 18 %, and the encoder trained on that found
purple and cyan targets in the exterior views of ``ood`` episodes least often (0.62 and 0.57, against 0.87
for the other colours). An *image* is one arm pose in that scene with its three DROID views:
the TCP is put (by IK, without physics) above the table at the heights and tilts a top-down approach
passes through (:class:`CaptionConfig`), over one of the objects for most poses, so the wrist view --
the view the planner scores -- shows objects close up and from afar; in a share of the poses the arm
holds an object between its fingers, as in the carry phase of an episode.

On disk (``OUT``): ``captions.json`` (generator, seed, config, image count) and ``shard_NNNNN.npz`` files of
``images_per_shard`` images each, without pickles: ``images`` (n, V, H, W, 3) uint8 in ``CAMERA_NAMES``
order, ``labels`` (n, V, H, W) uint8 (entity index + 1, 0 = table, robot or background), ``tcp``
(n, 6) the TCP pose, ``positions`` (n, O, 3) float32 each object's position in metres (robot base frame, the
objects in ``entities`` order, NaN-padded to ``objects[1]``; the container's is not stored: the target locator
reads it, :func:`~vidplan_server.training.locator_data.caption_locator_data`), ``entities`` a JSON string (per
image, the list of :class:`Entity`). Every shard is
seeded from (seed, shard index) alone and written atomically, so the command is resumable: re-running it
renders only missing shards, and any worker count gives the same files.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidplan_server.data.errors import DatasetError
from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.models.checkpoint import _write_atomic
from vidplan_server.robot.panda import Q_HOME, matrix_to_pose
from vidplan_server.sim.bullet import p
from vidplan_server.sim.caption_text import Entity
from vidplan_server.sim.scene import ARM_JOINTS, FINGER_JOINTS, SimScene
from vidplan_server.sim.tasks import OBJECT_REGION, DistractorCounts, sample_task

MANIFEST = "captions.json"
GENERATOR = "vidplan sim captions"


@dataclass(frozen=True)
class CaptionConfig:
    resolution: tuple[int, int] = (64, 64)  # (height, width) per view, the encoder's input size
    poses_per_scene: int = 3  # images (arm poses) rendered per built scene
    images_per_shard: int = 48
    objects: tuple[int, int] = (1, 6)  # objects per scene, inclusive
    ood_scene_fraction: float = 0.75  # scenes drawn from the ood split (novel target + any object / colour)
    tcp_height_m: tuple[float, float] = (0.02, 0.34)  # grasp height .. above the expert's carry height
    tilt_std_rad: float = 0.08  # roll / pitch away from straight down
    yaw_range_rad: float = 1.5708  # |yaw| the expert's grasps use (+- pi / 2 around the home yaw 0)
    over_object_fraction: float = 0.75  # poses centred over an object; the rest over the container or anywhere
    over_container_fraction: float = 0.1
    focus_std_m: float = 0.04  # scatter of the TCP around the object it is over
    hold_fraction: float = 0.15  # poses that hold the object they are over between the fingers
    max_ik_tries: int = 8


@dataclass(frozen=True)
class CaptionSummary:
    rendered: int  # images rendered by this call
    skipped: int  # images already on disk
    seconds: float


@dataclass
class CaptionSet:
    """Loaded renders: images (N, V, H, W, 3) uint8, labels (N, V, H, W) uint8, entities per image."""

    images: np.ndarray
    labels: np.ndarray
    entities: list[list[Entity]]
    tcp: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), np.float32))
    images_per_shard: int = CaptionConfig.images_per_shard  # scenes never cross a shard
    # (N, O, 3) m, the objects' positions (entities order, NaN-padded); None for folders rendered before they were
    # stored
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def shard_sizes(images: int, per_shard: int) -> list[int]:
    return [min(per_shard, images - s) for s in range(0, images, per_shard)]


# ------------------------------------------------------------------------------------------ render
def _entities(scene: SimScene) -> tuple[list[Entity], list[int]]:
    ents = [Entity(o.asset.name, o.colour, "object") for o in scene.objects]
    bodies = [o.body for o in scene.objects]
    ents.append(Entity(scene.container.asset.name, scene.container.colour, "container"))
    bodies.append(scene.container.body)
    return ents, bodies


def _set_arm(scene: SimScene, q: np.ndarray, finger_m: float) -> None:
    for j, v in zip(ARM_JOINTS, q, strict=True):
        p.resetJointState(scene.robot, j, float(v), physicsClientId=scene.client)
    for j in FINGER_JOINTS:
        p.resetJointState(scene.robot, j, finger_m, physicsClientId=scene.client)


def _pose(scene: SimScene, rng: np.random.Generator, cfg: CaptionConfig) -> tuple[np.ndarray, int | None]:
    """A TCP transform (4, 4) and the index of the object it is over (None: over the container or anywhere)."""
    from scipy.spatial.transform import Rotation

    r = rng.random()
    focus = None
    if r < cfg.over_object_fraction:
        focus = int(rng.integers(len(scene.objects)))
        xy = scene.object_pose(scene.objects[focus])[0][:2] + rng.normal(0.0, cfg.focus_std_m, 2)
    elif r < cfg.over_object_fraction + cfg.over_container_fraction:
        xy = scene.container_pose()[0][:2] + rng.normal(0.0, cfg.focus_std_m, 2)
    else:
        xy = np.array([rng.uniform(*OBJECT_REGION[0]), rng.uniform(*OBJECT_REGION[1])])
    T = np.eye(4)
    roll, pitch = np.pi + rng.normal(0.0, cfg.tilt_std_rad), rng.normal(0.0, cfg.tilt_std_rad)
    yaw = rng.uniform(-cfg.yaw_range_rad, cfg.yaw_range_rad)
    T[:3, :3] = Rotation.from_euler("xyz", [roll, pitch, yaw]).as_matrix()
    T[:3, 3] = [xy[0], xy[1], rng.uniform(*cfg.tcp_height_m)]
    return T, focus


def render_image(
    scene: SimScene, rng: np.random.Generator, cfg: CaptionConfig, bodies: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One arm pose in the current scene: images (V, H, W, 3), labels (V, H, W), TCP pose (6,), the objects'
    positions (n_objects, 3) as rendered (a held object where the fingers hold it)."""
    for _ in range(cfg.max_ik_tries):
        target, focus = _pose(scene, rng, cfg)
        ik = scene.kin.ik(target, q0=Q_HOME)
        if ik.success:
            break
    q = ik.q
    tcp_T = scene.kin.fk(q)
    held = focus is not None and rng.random() < cfg.hold_fraction
    finger = 0.04
    if held:  # the object between the fingers, as when carried (restored after rendering)
        obj = scene.objects[focus]
        pos, orn = scene.object_pose(obj)
        lo, hi = p.getAABB(obj.body, physicsClientId=scene.client)
        centre = (np.array(lo) + np.array(hi)) / 2
        p.resetBasePositionAndOrientation(
            obj.body, (pos + tcp_T[:3, 3] - centre).tolist(), orn.tolist(), physicsClientId=scene.client
        )
        finger = float(np.clip(obj.half_extents[:2].min(), 0.004, 0.04))
    _set_arm(scene, q, finger)
    images, seg = scene.render(*cfg.resolution, tcp_T=tcp_T)
    positions = np.stack([scene.object_pose(o)[0] for o in scene.objects]).astype(np.float32)
    if held:
        p.resetBasePositionAndOrientation(obj.body, pos.tolist(), orn.tolist(), physicsClientId=scene.client)
    labels = np.zeros((len(CAMERA_NAMES), *cfg.resolution), np.uint8)
    for v, cam in enumerate(CAMERA_NAMES):
        for i, body in enumerate(bodies):
            labels[v][seg[cam] == body] = i + 1
    return np.stack([images[c] for c in CAMERA_NAMES]), labels, matrix_to_pose(tcp_T).astype(np.float32), positions


def render_shard(seed: int, shard: int, count: int, cfg: CaptionConfig, scene: SimScene) -> dict[str, np.ndarray]:
    """The ``count`` images of shard ``shard`` as the arrays written to its file."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7_000_003, shard]))
    lo, hi = cfg.objects
    counts = DistractorCounts(train=(lo - 1, hi - 1), ood=(lo - 1, hi - 1))
    images, labels, tcp, entities = [], [], [], []
    positions = np.full((count, hi, 3), np.nan, np.float32)
    for k in range(count):
        if k % cfg.poses_per_scene == 0:
            split = "ood" if rng.random() < cfg.ood_scene_fraction else "train"
            spec, _ = sample_task(rng, split, distractors=counts)
            scene.reset(spec)
            ents, bodies = _entities(scene)
        im, lab, pose, where = render_image(scene, rng, cfg, bodies)
        positions[k, : len(where)] = where
        images.append(im)
        labels.append(lab)
        tcp.append(pose)
        entities.append([e.to_json() for e in ents])
    return {
        "images": np.stack(images),
        "labels": np.stack(labels),
        "tcp": np.stack(tcp),
        "positions": positions,
        "entities": np.array(json.dumps(entities)),
    }


# ------------------------------------------------------------------------------------------ files
def _shard_path(out: Path, shard: int) -> Path:
    return out / f"shard_{shard:05d}.npz"


def _shard_count(path: Path) -> int:
    """Images in a finished shard file (0 when absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["tcp"].shape[0])
    except (OSError, ValueError, KeyError):
        return 0


def _check_manifest(out: Path, seed: int, cfg: CaptionConfig) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    mine = json.loads(json.dumps(asdict(cfg)))
    if old.get("seed") != seed or old.get("config") != mine:
        raise DatasetError(
            f"{out}: holds captions of another seed or config (seed {old.get('seed')}); "
            "use another --out or the same arguments to resume"
        )


_worker_scene: SimScene | None = None


def _worker_init(silence_stdout: bool = False) -> None:
    global _worker_scene
    if silence_stdout:  # pool workers report through return values; their stdout only carries PyBullet's banner
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    _worker_scene = SimScene()


def _work(args: tuple[int, int, int, CaptionConfig, str]) -> int:
    seed, shard, count, cfg, out = args
    arrays = render_shard(seed, shard, count, cfg, _worker_scene)
    _write_atomic(_shard_path(Path(out), shard), lambda tmp: _savez(tmp, arrays))
    return count


def _savez(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # np.savez on a path would append ".npz" to the temporary name
        np.savez_compressed(f, **arrays)


def generate_captions(
    out: str | Path,
    images: int,
    seed: int = 0,
    cfg: CaptionConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> CaptionSummary:
    """Make ``out`` hold ``images`` captioned images, rendering only the shards that are missing or short."""
    cfg = cfg or CaptionConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, seed, cfg)
    manifest = {
        "generator": GENERATOR,
        "seed": seed,
        "images": images,
        "config": asdict(cfg),
        "views": list(CAMERA_NAMES),
    }
    _write_atomic(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n"))
    sizes = shard_sizes(images, cfg.images_per_shard)
    todo = [(seed, k, n, cfg, str(out)) for k, n in enumerate(sizes) if _shard_count(_shard_path(out, k)) != n]
    skipped = images - sum(job[2] for job in todo)
    t0 = time.perf_counter()
    bar = tqdm(total=images, initial=skipped, desc="captions", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(todo) <= 1:
            _worker_init()
            for job in todo:
                bar.update(_work(job))
        else:
            ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked PyBullet state
            with ctx.Pool(min(workers, len(todo)), initializer=_worker_init, initargs=(True,)) as pool:
                for n in pool.imap_unordered(_work, todo):
                    bar.update(n)
    finally:
        bar.close()
    return CaptionSummary(images - skipped, skipped, time.perf_counter() - t0)


def load_captions(folder: str | Path, progress: bool = False) -> CaptionSet:
    """Every image of a finished ``vidplan sim captions`` folder."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{folder}: no {MANIFEST}; make the folder with `vidplan sim captions --out {folder}`")
    manifest = json.loads(path.read_text())
    sizes = shard_sizes(manifest["images"], manifest["config"]["images_per_shard"])
    images, labels, tcp, entities, positions = [], [], [], [], []
    for k in tqdm(range(len(sizes)), desc=f"load {folder.name}", disable=not progress, leave=False):
        shard = _shard_path(folder, k)
        if _shard_count(shard) != sizes[k]:
            raise DatasetError(
                f"{shard}: missing or incomplete; re-run `vidplan sim captions` with the same "
                "arguments to finish the folder"
            )
        with np.load(shard, allow_pickle=False) as z:
            images.append(z["images"])
            labels.append(z["labels"])
            tcp.append(z["tcp"])
            positions.append(z["positions"] if "positions" in z else None)
            entities += [[Entity(**e) for e in ents] for ents in json.loads(str(z["entities"]))]
    return CaptionSet(
        np.concatenate(images),
        np.concatenate(labels),
        entities,
        np.concatenate(tcp),
        manifest["config"]["images_per_shard"],
        None if any(x is None for x in positions) else np.concatenate(positions),
    )
