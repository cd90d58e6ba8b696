"""Summaries of constructed episode records: layout, pairing with the policy, per task kind; the CLI end to end."""

import json

import pytest

from vidplan_server.cli import main
from vidplan_server.evaluation.closed_loop import agents as agents_mod
from vidplan_server.evaluation.closed_loop.report import format_table, summarize, write_report
from vidplan_server.evaluation.closed_loop.stats import paired_difference, wilson_interval


def record(agent, split, index, success, kind="place", first="target", cause=None):
    return {
        "agent": agent,
        "split": split,
        "index": index,
        "seed": 1000 + index,
        "task_kind": kind,
        "success": success,
        "first_grasp": first,
        "failure_cause": None if success else (cause or "dropped"),
        "steps": 100,
        "plans": 13,
        "mean_plan_ms": 40.0,
        "wall_s": 3.0,
    }


def test_summary_pairs_agents_on_common_episodes_per_split_and_kind():
    policy = [record("policy", "val", i, i < 4, kind="pick" if i % 2 else "place") for i in range(10)]
    vidplan = [
        record(
            "vidplan",
            "val",
            i,
            i < 7,
            kind="pick" if i % 2 else "place",
            first="other" if i == 9 else "target",
            cause="wrong_object" if i == 9 else None,
        )
        for i in range(12)
    ]  # two episodes the policy did not run
    vidplan[8]["failure_cause"] = "agent_error: RuntimeError: boom"
    expert = [record("expert", "ood", i, True) for i in range(3)]
    s = summarize(policy + vidplan + expert)
    assert list(s) == ["val", "ood"] and list(s["val"]) == ["policy", "vidplan"]
    v = s["val"]["vidplan"]
    w = wilson_interval(7, 12)
    assert (v["success"], v["ci_low"], v["ci_high"], v["episodes"]) == (
        round(7 / 12, 4),
        round(w.low, 4),
        round(w.high, 4),
        12,
    )
    d = paired_difference([i < 7 for i in range(10)], [i < 4 for i in range(10)])
    assert v["paired_episodes"] == 10 and v["paired_diff_to_policy"] == pytest.approx(0.3)
    assert (v["paired_ci_low"], v["paired_ci_high"]) == (round(d.low, 4), round(d.high, 4))
    assert v["instruction_following"] == round(11 / 12, 4) and v["wrong_object"] == round(1 / 12, 4)
    assert v["failure_causes"] == {"agent_error": 1, "dropped": 3, "wrong_object": 1}
    assert s["val"]["policy"]["paired_diff_to_policy"] is None
    assert s["ood"]["expert"]["paired_diff_to_policy"] is None  # no policy episodes on ood
    # per task kind: place = even indices
    place = v["by_kind"]["place"]
    assert place["episodes"] == 6 and place["successes"] == 4 and place["paired_episodes"] == 5
    assert place["paired_diff_to_policy"] == pytest.approx((4 - 2) / 5)
    table = format_table(s)
    assert "| val | vidplan | 12 | 58 [" in table and "+30 [" in table and "(10)" in table


def test_write_report_files(tmp_path):
    recs = [record("policy", "val", i, i < 2) for i in range(4)] + [
        record("vidplan", "val", i, i < 3) for i in range(4)
    ]
    summary = write_report(tmp_path, recs)
    assert json.loads((tmp_path / "closed_loop.json").read_text()) == summary
    assert "| val | policy | 4 |" in (tmp_path / "closed_loop.md").read_text()
    assert (tmp_path / "closed_loop.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_runs_the_expert_and_reports(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cl"
    code = main(
        [
            "eval",
            "closed-loop",
            "--split",
            "val",
            "--episodes",
            "1",
            "--agent",
            "expert",
            "--max-steps",
            "3",
            "--videos",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "closed_loop.json").read_text())
    assert summary["val"]["expert"]["episodes"] == 1 and summary["val"]["expert"]["success"] == 0.0
    assert "| val | expert | 1 |" in capsys.readouterr().out
    code = main(
        [
            "eval",
            "closed-loop",
            "--split",
            "val",
            "--episodes",
            "1",
            "--agent",
            "expert",
            "--max-steps",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "--max-steps 3 there, 4 now" in capsys.readouterr().err
    monkeypatch.setattr(agents_mod, "PLANNING_AGENTS_MODULE", "vidplan_server.evaluation.closed_loop.not_there")
    code = main(
        [
            "eval",
            "closed-loop",
            "--split",
            "ood",
            "--episodes",
            "1",
            "--agent",
            "expert,vidplan",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2 and "--agent 'vidplan': needs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "closed-loop", "--split", "val", "--episodes", "1", "--agent", "robot", "--out", str(out)])
    assert "expected names from expert, policy" in capsys.readouterr().err


def test_cli_pools_several_base_seeds_and_refuses_them_in_realtime(tmp_path, capsys):
    out = tmp_path / "cl"
    argv = ["eval", "closed-loop", "--split", "val", "--episodes", "1", "--agent", "expert", "--out", str(out)]
    assert main([*argv, "--seed", "5,6", "--max-steps", "2", "--videos", "0", "--quiet"]) == 0
    summary = json.loads((out / "closed_loop.json").read_text())
    assert summary["val"]["expert"]["episodes"] == 2
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"seed_5", "seed_6"}
    capsys.readouterr()
    assert main([*argv, "--seed", "5,6", "--realtime"]) == 2
    assert "--realtime runs one base seed at a time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--seed", "5,5"])
    assert "distinct integers" in capsys.readouterr().err


def test_no_grasp_failures_are_split_by_kind_in_the_summary_and_table():
    recs = [record("policy", "ood", i, False, first="none", cause="no_grasp") for i in range(4)]
    for r, (closest, close) in zip(recs[:3], [(0.3, None), (0.03, None), (0.02, 0.03)], strict=True):
        r.update(closest_target_m=closest, closes=int(close is not None), closest_close_m=close)
    cell = summarize(recs)["ood"]["policy"]
    assert cell["failure_causes"] == {"no_grasp": 4}  # the fourth record predates the fields: counted, not split
    assert cell["no_grasp_kinds"] == {"far": 1, "no_close": 1, "missed": 1}
    assert "no_grasp 4 (far 1, no_close 1, missed 1)" in format_table(summarize(recs))
    old = format_table(summarize(recs[3:]))  # only records from before the fields: the count alone
    assert "| no_grasp 1 |" in old and "()" not in old
