"""The closed-loop runner: short episodes with the expert and with small fake agents, pairing, resuming, errors."""

import json
import time

import numpy as np
import pytest

from vidplan_server.data.video import decode_video
from vidplan_server.data.video_frames import HEADER_PX
from vidplan_server.evaluation.closed_loop import agents as agents_mod
from vidplan_server.evaluation.closed_loop import runner
from vidplan_server.evaluation.closed_loop.agents import AgentStep, AgentUnavailable, ExpertAgent, build_agent
from vidplan_server.evaluation.closed_loop.runner import (
    ClosedLoopConfig,
    ClosedLoopError,
    Job,
    load_all_episodes,
    run_closed_loop,
    run_closed_loop_seeds,
    run_episode,
)
from vidplan_server.evaluation.closed_loop.video import EpisodeVideo, plan_frame
from vidplan_server.sim.robot_env import SimEnvConfig, SimRobotEnv


class LiftAgent:
    """Chunks of 5 rows raising the TCP 5 mm per row from the observed pose, with heatmaps and a plan kind."""

    name = "lift"

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at  # raise on this act() call (0-based) of each episode
        self.calls: list[list[dict]] = []

    def reset(self, env, seed):
        self.calls = []

    def act(self, history, instruction):
        self.calls.append(history)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise RuntimeError("planner exploded")
        state = history[-1]["robot_state"]
        start = np.r_[state["cartesian_position"], state["gripper_position"]]
        actions = start + np.outer(np.arange(1, 6), [0, 0, 0.005, 0, 0, 0, 0])
        heatmaps = np.zeros((5, 3, 8, 8, 3), np.uint8)
        heatmaps[..., 0] = 200
        return AgentStep(actions, {"kind": "lift", "plan_ms": 12.5, "confidence": 0.5, "heatmaps": heatmaps})


def test_an_episode_with_a_fake_agent_executes_its_chunks_and_records_them(sim_scene, tmp_path):
    env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
    agent = LiftAgent()
    config = ClosedLoopConfig(max_steps=12, open_loop_horizon=8, history_steps=4, video_scale=1)
    video = EpisodeVideo(scale=1)
    rec = run_episode(env, agent, Job("val", "policy", 0), config, video)
    # chunks of 5 rows are used up before the horizon of 8: plans at steps 0, 5, 10
    assert rec["plans"] == 3 and rec["steps"] == 12
    assert [h[-1]["timestamp"]["step"] for h in agent.calls] == [0, 5, 10]
    first, second = agent.calls[0], agent.calls[1]
    assert len(first) == len(second) == 4
    assert all(o is first[0] for o in first)  # the start is padded with the first observation
    assert [o["timestamp"]["step"] for o in second] == [2, 3, 4, 5]
    z = [h[-1]["robot_state"]["cartesian_position"][2] for h in agent.calls]
    assert z[1] > z[0] + 0.01 and z[2] > z[1] + 0.01  # the robot executed the chunks
    assert rec["plan_kinds"] == {"lift": 3} and rec["agent_plan_ms"] == 12.5 and rec["mean_confidence"] == 0.5
    assert rec["success"] is False and rec["first_grasp"] == "none" and rec["failure_cause"] == "no_grasp"
    assert rec["closes"] == 0 and rec["closest_close_m"] is None and rec["closest_target_m"] > 0.05  # lifts, far
    assert rec["task_kind"] in ("place", "pick") and rec["instruction"] == env.instruction
    # one video frame per step plus the final state; the heatmap row shows the plan's overlay
    path = video.write(tmp_path / "ep.mp4")
    frames = decode_video(path)
    assert frames.shape == (13, HEADER_PX + 2 * 64, 3 * 64, 3)
    assert frames[0, HEADER_PX + 64 + 32, 32, 0] > 150 and frames[-1, HEADER_PX + 64 + 32, 32, 0] < 60


def test_heatmap_frame_of_a_row():
    assert [plan_frame(r, 15, 5) for r in range(15)] == [r // 3 for r in range(15)]
    assert plan_frame(7, 8, 5) == 4 and plan_frame(0, 1, 5) == 0


def test_the_expert_follows_its_script_row_by_row_whatever_the_horizon(sim_scene):
    executed = {}
    for horizon in (3, 8):
        env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
        sent = []
        update = env.update_robot
        env.update_robot = lambda a, _u=update, _s=sent: (_s.append(np.array(a)), _u(a))[1]
        rec = run_episode(
            env, ExpertAgent(), Job("val", "expert", 1), ClosedLoopConfig(max_steps=10, open_loop_horizon=horizon), None
        )
        assert rec["plans"] == -(-10 // horizon)
        executed[horizon] = np.stack(sent)
    np.testing.assert_array_equal(executed[3], executed[8])
    assert np.linalg.norm(np.diff(executed[3][:, :3], axis=0), axis=1).max() < 0.03  # no skipped rows


@pytest.mark.slow
def test_the_expert_completes_an_episode_and_it_ends_once_success_held(sim_scene):
    env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
    config = ClosedLoopConfig(success_hold_steps=5)
    rec = run_episode(env, ExpertAgent(), Job("val", "expert", 0), config, None)
    assert rec["success"] is True and rec["failure_cause"] is None
    assert rec["first_grasp"] == "target" and rec["first_grasp_step"] < rec["success_step"]
    # the expert closes once, at the object (TCP to object centre within the grasp's reach)
    assert rec["closes"] == 1 and rec["closest_close_m"] < 0.05 and rec["closest_target_m"] <= rec["closest_close_m"]
    assert rec["steps"] == rec["success_step"] + 4 < config.max_steps


def test_a_raising_or_malformed_agent_fails_its_episode_with_the_cause(sim_scene):
    env = SimRobotEnv(SimEnvConfig(split="val"), scene=sim_scene)
    config = ClosedLoopConfig(max_steps=20)
    rec = run_episode(env, LiftAgent(fail_at=1), Job("val", "policy", 0), config, None)
    assert rec["success"] is False and rec["steps"] == 5 and rec["plans"] == 1
    assert rec["failure_cause"] == "agent_error: RuntimeError: planner exploded"

    class Malformed(LiftAgent):
        def act(self, history, instruction):
            return AgentStep(np.zeros((4, 6)), {})

    rec = run_episode(env, Malformed(), Job("val", "policy", 1), config, None)
    assert rec["steps"] == 0 and rec["failure_cause"].startswith("agent_error: ValueError: AgentStep.actions")


@pytest.fixture
def fake_agents(monkeypatch):
    """run_closed_loop builds LiftAgents for 'policy' and 'vidplan' (the planning agents may not exist here)."""
    built = []

    def build(name, ckpt=None, device="cpu", **options):
        if name == "expert":
            return ExpertAgent()
        agent = LiftAgent(**options)
        agent.name = name
        built.append(agent)
        return agent

    monkeypatch.setattr(runner, "build_agent", build)
    monkeypatch.setattr(runner, "check_agent", lambda name: None)
    return built


def test_agents_meet_the_same_scenes_on_the_same_seeds(tmp_path, fake_agents, monkeypatch):
    seen = {}

    class Recorder(LiftAgent):
        def reset(self, env, seed):
            super().reset(env, seed)
            seen[(self.name, seed)] = env.get_observation()["image"]["exterior_image_1_left"]

    monkeypatch.setattr(runner, "build_agent", lambda name, *a, **o: type("A", (Recorder,), {"name": name})())
    config = ClosedLoopConfig(max_steps=2, videos=0)
    recs = run_closed_loop(tmp_path, ["val", "ood"], {"policy": 2, "vidplan": 2}, config, progress=False)
    by = {(r["agent"], r["split"], r["index"]): r for r in recs}
    assert len(by) == 8
    for split in ("val", "ood"):
        for i in range(2):
            a, b = by[("policy", split, i)], by[("vidplan", split, i)]
            assert a["seed"] == b["seed"] and a["instruction"] == b["instruction"]
            np.testing.assert_array_equal(seen[("policy", a["seed"])], seen[("vidplan", b["seed"])])
    assert len({r["seed"] for r in recs}) == 4  # other index or split: another scene
    assert not np.array_equal(
        seen[("policy", by[("policy", "val", 0)]["seed"])], seen[("policy", by[("policy", "val", 1)]["seed"])]
    )


def test_a_run_resumes_without_redoing_episodes_and_keeps_its_options(tmp_path, fake_agents):
    config = ClosedLoopConfig(max_steps=6, videos=1, video_scale=1, agent_options={"vidplan": {"fail_at": 0}})
    recs = run_closed_loop(tmp_path, ["val"], {"policy": 2, "vidplan": 1}, config, progress=False)
    assert [(r["agent"], r["index"]) for r in recs] == [("policy", 0), ("vidplan", 0), ("policy", 1)]
    # the raising agent's episode is a recorded failure and did not stop the run
    assert recs[1]["failure_cause"] == "agent_error: RuntimeError: planner exploded"
    assert (tmp_path / "videos/val/policy/0.mp4").is_file() and not (tmp_path / "videos/val/policy/1.mp4").exists()
    assert recs[0]["video"] == "videos/val/policy/0.mp4"
    first = (tmp_path / "episodes/val/policy/0.json").read_text()
    built_before = len(fake_agents)

    recs = run_closed_loop(tmp_path, ["val"], {"policy": 3, "vidplan": 1}, config, progress=False)
    assert len(recs) == 4 and (tmp_path / "episodes/val/policy/0.json").read_text() == first
    assert len(fake_agents) == built_before + 1  # one agent built for the one missing episode
    assert sum(len(a.calls) > 0 for a in fake_agents[built_before:]) == 1
    assert json.loads((tmp_path / "run.json").read_text())["max_steps"] == 6

    with pytest.raises(ClosedLoopError, match="--max-steps 6 there, 7 now"):
        run_closed_loop(tmp_path, ["val"], {"policy": 3}, ClosedLoopConfig(max_steps=7), progress=False)


def test_several_base_seeds_run_in_their_own_folders_and_pool(tmp_path, fake_agents):
    config = ClosedLoopConfig(max_steps=2, videos=0)
    recs = run_closed_loop_seeds(tmp_path, ["val"], {"policy": 2, "vidplan": 1}, [7, 8], config, progress=False)
    assert len(recs) == 6
    for seed in (7, 8):
        mine = [r for r in recs if r["options"]["seed"] == seed]
        assert len(mine) == 3 and json.loads((tmp_path / f"seed_{seed}/run.json").read_text())["seed"] == seed
        assert sorted(p.name for p in (tmp_path / f"seed_{seed}/episodes/val/policy").iterdir()) == ["0.json", "1.json"]
    # other base seed, other scenes; within one base seed the agents share them
    assert len({r["seed"] for r in recs if r["agent"] == "policy"}) == 4
    assert {r["seed"] for r in recs if r["agent"] == "vidplan"} <= {r["seed"] for r in recs if r["agent"] == "policy"}
    assert not (tmp_path / "episodes").exists() and not (tmp_path / "run.json").exists()
    assert sorted(map(json.dumps, load_all_episodes(tmp_path))) == sorted(map(json.dumps, recs))

    # one base seed keeps a plain run's layout, so it resumes a run made before seeds could be pooled
    one = run_closed_loop_seeds(tmp_path / "one", ["val"], {"policy": 1}, [7], config, progress=False)
    assert (tmp_path / "one/episodes/val/policy/0.json").is_file() and one[0]["seed"] == recs[0]["seed"]
    # the same episode found in a plain run and in a seed folder counts once
    run_closed_loop_seeds(tmp_path / "one", ["val"], {"policy": 1}, [7, 9], config, progress=False)
    assert len(load_all_episodes(tmp_path / "one")) == 2

    for seeds, message in (([], "at least one"), ([7, 7], "each base seed once")):
        with pytest.raises(ClosedLoopError, match=message):
            run_closed_loop_seeds(tmp_path, ["val"], {"policy": 1}, seeds, config, progress=False)


def test_the_seed_option_takes_a_comma_list_of_distinct_integers():
    import argparse

    from vidplan_server.evaluation.closed_loop.cli import seed_list

    assert seed_list("1000") == [1000] and seed_list("1000, 2000,3000") == [1000, 2000, 3000]
    for bad in ("", "a", "1,1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="distinct integers"):
            seed_list(bad)


@pytest.mark.slow
def test_parallel_workers_run_the_expert(tmp_path):
    config = ClosedLoopConfig(max_steps=3, videos=0)
    recs = run_closed_loop(tmp_path, ["val"], {"expert": 2}, config, workers=2, progress=False)
    assert [r["index"] for r in recs] == [0, 1] and all(r["steps"] == 3 and r["plans"] == 1 for r in recs)
    assert all((tmp_path / f"episodes/val/expert/{i}.json").is_file() for i in range(2))


def test_agent_names_and_a_missing_planning_module(monkeypatch):
    assert isinstance(build_agent("expert"), ExpertAgent)
    with pytest.raises(AgentUnavailable, match="'mystery': unknown"):
        build_agent("mystery")
    monkeypatch.setattr(agents_mod, "PLANNING_AGENTS_MODULE", "vidplan_server.evaluation.closed_loop.not_there")
    with pytest.raises(AgentUnavailable, match="agent 'vidplan': needs .*not_there"):
        build_agent("vidplan")
    with pytest.raises(ClosedLoopError, match="--agent 'policy': needs"):
        run_closed_loop(runner.Path("unused"), ["val"], {"policy": 1}, progress=False)
    with pytest.raises(ClosedLoopError, match="--max-steps must be >= 1"):
        ClosedLoopConfig(max_steps=0)


def test_sigterm_inside_a_run_exits_through_the_pools_cleanup():
    import os
    import signal

    from vidplan_server.evaluation.closed_loop.runner import sigterm_exits

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, sigterm_exits():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # restored
