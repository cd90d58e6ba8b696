"""DAgger: the resumed expert labels states it did not make; the collector records them; training reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidplan_server.data.schema import CAMERA_NAMES
from vidplan_server.sim.episode import episode_seed
from vidplan_server.sim.expert import ScriptedExpert
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv
from vidplan_server.training.dagger import (
    DaggerConfig,
    DaggerError,
    PolicyActor,
    collect,
    dagger_samples,
    expert_chunk,
    resize_views,
    run_dagger_episode,
)


def _first_seed(kind: str, env: SimRobotEnv) -> int:
    for i in range(40):
        seed = episode_seed(500, "train", i)
        env.reset(seed)
        if env.task.kind == kind:
            return seed
    raise AssertionError(f"no {kind} task among 40 seeds")


@pytest.mark.parametrize("kind", ["pick", "place"])
def test_relabelled_expert_finishes_the_task_when_replanning_every_8_steps(sim_scene, kind):
    """Executing only the resumed expert's chunks, 8 rows each, must do the task: every phase resumes."""
    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    seed = _first_seed(kind, env)
    never_expert = lambda obs, instruction: (_ for _ in ()).throw(AssertionError("beta=1 never asks the policy"))
    arrays = run_dagger_episode(env, never_expert, seed, DaggerConfig(beta=1.0, max_steps=200), chunk=15)
    assert bool(arrays["success"]), kind
    T = len(arrays["frames"])
    assert arrays["frames"].shape == (T, 3, 64, 64, 3) and arrays["chunk"].shape == (T, 15, 7)
    assert arrays["state"].shape == (T, 7)


def test_resumed_expert_descends_from_just_above_the_approach_height_while_turning(sim_scene):
    """A hand over the target, 5 mm above the approach height and 1.2 rad off the grasp yaw: the label descends
    within the 8 rows a policy executes (it turns on the way down), and following such labels picks the object.
    Before, it turned in place first (15+ rows at the same height): a policy imitating that hovered for good."""
    from scipy.spatial.transform import Rotation

    from vidplan_server.sim.expert import ExpertConfig

    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    env.reset(_first_seed("pick", env))
    target = env.scene.objects[0]
    pos, quat = env.scene.object_pose(target)
    obj_yaw = Rotation.from_quat(quat).as_euler("xyz")[2]
    short = obj_yaw if target.half_extents[0] <= target.half_extents[1] else obj_yaw + np.pi / 2
    yaw = short + np.pi / 2 + 1.2
    z = pos[2] + target.half_extents[2] + ExpertConfig().approach_height_m + 0.005
    for _ in range(40):
        env.update_robot(np.array([pos[0], pos[1], z, np.pi, 0.0, yaw, 0.0]))
    label = expert_chunk(env, 15)
    tcp_z = env.scene.kin.fk(env.scene.joint_positions())[2, 3]
    assert tcp_z - label[7, 2] > 0.02, "descends within the executed rows"
    for _ in range(12):  # follow the resumed labels, 8 rows at a time, as DAgger's policy would
        for row in expert_chunk(env, 15)[:8]:
            env.update_robot(row)
        if env.is_success():
            break
    assert env.is_success()


@pytest.mark.parametrize("kind", ["pick", "place"])
def test_resumed_expert_starts_at_speed_mid_move(sim_scene, kind):
    """Mid-transit, the label moves on at the script's pace instead of easing in from rest: its first rows cover
    about as much of its path as the recorded script's rows do there (a policy learns one speed per state)."""
    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    env.reset(_first_seed(kind, env))
    script = ScriptedExpert(env.scene, env.task, np.random.default_rng(0)).actions()
    for _ in range(6):
        env.update_robot(next(script))
    recorded = np.stack([next(script) for _ in range(15)])
    label = expert_chunk(env, 15)
    tcp = env.scene.kin.fk(env.scene.joint_positions())[:3, 3]

    def share(rows: np.ndarray) -> float:  # share of the 15-row path covered by the first three rows
        return float(np.linalg.norm(rows[2, :3] - tcp) / np.linalg.norm(rows[14, :3] - tcp))

    assert share(label) > 0.6 * share(recorded) and share(label) > 0.2, (share(label), share(recorded))


def test_resumed_expert_keeps_a_held_object_and_releases_a_wrong_one(sim_scene):
    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    env.reset(_first_seed("place", env))
    script = ScriptedExpert(env.scene, env.task, np.random.default_rng(0)).actions()
    for _ in range(200):  # the nominal script until the target hangs in the gripper at carry height
        env.update_robot(next(script))
        if env.scene.object_pose(env.scene.objects[0])[0][2] > 0.15:
            break
    else:
        raise AssertionError("the nominal script never lifted the target")
    held = expert_chunk(env, 15)
    assert np.all(held[:, 6] == 1.0), "a held target stays gripped"
    assert env.scene.objects  # the scene still has its objects
    # A chunk asked at the episode's start reaches for the target with the gripper open.
    env.reset(_first_seed("place", env))
    start = expert_chunk(env, 15)
    assert np.all(start[:, 6] == 0.0)
    target = env.scene.object_pose(env.scene.objects[0])[0]
    tcp0 = env.scene.kin.fk(env.scene.joint_positions())[:3, 3]
    assert np.linalg.norm(start[-1, :2] - target[:2]) < np.linalg.norm(tcp0[:2] - target[:2])


def test_resume_refuses_a_failure_mode(sim_scene):
    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    env.reset(episode_seed(500, "train", 0))
    with pytest.raises(ValueError, match="nominal"):
        next(ScriptedExpert(env.scene, env.task, np.random.default_rng(0), mode="drop").resume())


def test_collect_writes_resumable_episodes_that_training_reads(tmp_path, tiny_policy_bundle):
    out = tmp_path / "dagger"
    config = DaggerConfig(max_steps=12, beta=0.5)
    s = collect(tiny_policy_bundle, out, 2, config, workers=1, progress=False)
    assert s["new"] == 2 and s["samples"] == 24
    files = sorted((out / "episodes").glob("*.npz"))
    assert [f.name for f in files] == ["00000.npz", "00001.npz"]
    assert json.loads((out / "dagger.json").read_text())["beta"] == 0.5
    again = collect(tiny_policy_bundle, out, 3, config, workers=1, progress=False)
    assert again["new"] == 1  # only the missing episode runs
    with pytest.raises(DaggerError, match="beta"):
        collect(tiny_policy_bundle, out, 3, DaggerConfig(max_steps=12, beta=0.1), progress=False)
    data = dagger_samples(out, (32, 32), 10, progress=False)
    assert data.frames.shape == (36, 3, 32, 32, 3) and data.chunk.shape == (36, 10, 7)
    assert len(data.instructions) >= 1 and data.text.max() < len(data.instructions)
    # The instructed object's position labels every step (on the table, in front of the robot) ...
    assert data.target_pos.shape == (36, 3) and np.isfinite(data.target_pos).all()
    assert (data.target_pos[:, 0] > 0.2).all() and (np.abs(data.target_pos[:, 2]) < 0.3).all()
    # ... and a folder written before it was stored reads back as unknown.
    with np.load(files[0]) as z:
        old = {k: z[k] for k in z.files if k != "target_pos"}
    np.savez(files[0], **old)
    data = dagger_samples(out, (32, 32), 10, progress=False)
    assert np.isnan(data.target_pos[:12]).all() and np.isfinite(data.target_pos[12:]).all()
    # Steps after the instructed object fell off the table are left out (their labels chase it).
    with np.load(files[1]) as z:
        fell = {k: z[k] for k in z.files}
    fell["target_pos"][8:, 2] = -0.4
    np.savez(files[1], **fell)
    data = dagger_samples(out, (32, 32), 10, progress=False)
    assert len(data) == 32 and data.frames.shape[0] == data.chunk.shape[0] == data.text.shape[0] == 32
    assert np.isnan(data.target_pos[:12]).all() and (data.target_pos[12:, 2] > -0.05).all()
    np.testing.assert_array_equal(data.state[12:20], fell["state"][:8])


def test_policy_actor_draws_its_noise_at_the_temperature(tiny_policy_bundle, sim_scene):
    """The actor's chunk is the policy's sample from the seed's noise scaled by the temperature."""
    import torch

    env = SimRobotEnv(SimEnvConfig(split="train"), scene=sim_scene)
    instruction = env.reset(episode_seed(500, "train", 0))
    obs = env.get_observation()
    cold, hot = PolicyActor(tiny_policy_bundle, 7, 0.25), PolicyActor(tiny_policy_bundle, 7, 2.0)
    got_cold, got_hot = cold(obs, instruction), hot(obs, instruction)
    assert not np.allclose(got_cold, got_hot)
    pol = cold.policy
    frames = np.stack([obs["image"][c] for c in CAMERA_NAMES])
    images = torch.as_tensor(resize_views(frames, pol.config.image_size)).permute(0, 3, 1, 2)[None].float() / 255
    rs = obs["robot_state"]
    state = torch.tensor([[*rs["cartesian_position"], float(np.clip(rs["gripper_position"], 0, 1))]])
    noise = torch.randn((1, 1, pol.config.chunk, 7), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = pol.sample(images, state.float(), [instruction], 0.25 * noise)[0, 0].double().numpy()
    np.testing.assert_allclose(got_cold, want, atol=1e-6)
    with pytest.raises(DaggerError, match="--temperature"):
        DaggerConfig(temperature=0.0)


def test_a_folder_from_before_the_temperature_resumes_at_1(tmp_path, tiny_policy_bundle):
    out = tmp_path / "dagger"
    collect(tiny_policy_bundle, out, 1, DaggerConfig(max_steps=4, temperature=1.0), progress=False)
    manifest = out / "dagger.json"
    old = json.loads(manifest.read_text())
    del old["temperature"]
    manifest.write_text(json.dumps(old))
    assert collect(tiny_policy_bundle, out, 1, DaggerConfig(max_steps=4, temperature=1.0), progress=False)["new"] == 0
    with pytest.raises(DaggerError, match="temperature: 1.0 there, 0.5 now"):
        collect(tiny_policy_bundle, out, 2, DaggerConfig(max_steps=4), progress=False)


def test_collect_needs_a_policy(tmp_path, tiny_heads_bundle):
    with pytest.raises(DaggerError, match="no policy"):
        collect(tiny_heads_bundle, tmp_path / "d", 1, progress=False)


def test_train_policy_adds_dagger_samples(tmp_path, tiny_policy_bundle, demo_dataset):
    import shutil

    from vidplan_server.cli import main

    dag = tmp_path / "dagger"
    collect(tiny_policy_bundle, dag, 1, DaggerConfig(max_steps=6), progress=False)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_policy_bundle, ckpt)
    code = main(
        [
            "train",
            "policy",
            "--data",
            str(demo_dataset),
            "--out",
            str(ckpt),
            "--preset",
            "tiny",
            "--steps",
            "6",
            "--resume",
            "--extra-data",
            str(dag),
            "--quiet",
        ]
    )
    assert code == 0
    meta = json.loads((ckpt / "config.json").read_text())["modules"]["policy"]["meta"]
    assert meta["samples"] == meta["demonstration_samples"] + 6 and meta["extra_data"] == [str(dag)]


def test_train_policy_adds_the_demonstrations_of_another_recording(tmp_path, demo_dataset):
    from vidplan_server.cli import main

    ckpt = tmp_path / "ckpt"
    base = ["train", "policy", "--data", str(demo_dataset), "--preset", "tiny", "--steps", "2", "--quiet"]
    assert main([*base, "--out", str(ckpt)]) == 0
    alone = json.loads((ckpt / "config.json").read_text())["modules"]["policy"]["meta"]
    assert main([*base, "--out", str(tmp_path / "ckpt2"), "--extra-data", str(demo_dataset)]) == 0
    meta = json.loads((tmp_path / "ckpt2" / "config.json").read_text())["modules"]["policy"]["meta"]
    # every demonstration step of the extra recording (its held-out episodes too) joins the training samples
    assert meta["samples"] > alone["samples"] and meta["demonstration_samples"] == alone["samples"]


def test_a_warm_start_fine_tunes_at_the_given_learning_rate(tmp_path, tiny_policy_bundle, demo_dataset, capsys):
    from vidplan_server.cli import main

    ckpt = tmp_path / "ckpt"
    args = ["train", "policy", "--data", str(demo_dataset), "--preset", "tiny", "--out", str(ckpt), "--quiet"]
    assert main([*args, "--steps", "4", "--init-from", str(tiny_policy_bundle), "--lr", "2e-4"]) == 0
    meta = json.loads((ckpt / "config.json").read_text())["modules"]["policy"]["meta"]
    assert meta["loop"]["lr"] == 2e-4 and meta["init"] == str(tiny_policy_bundle)
    # A resumed run keeps its learning rate: another one is refused, naming it.
    assert main([*args, "--steps", "6", "--resume", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "lr=0.001" in err and "only --steps may change on --resume" in err
    with pytest.raises(SystemExit):
        main([*args, "--steps", "6", "--resume", "--lr", "-1"])
    assert "--lr" in capsys.readouterr().err
