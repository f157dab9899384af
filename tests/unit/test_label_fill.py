"""Filling the queue with the tiny policy, the active-selection priorities, and the bad inputs
the label command must name."""

import json
import sqlite3

import pytest
import torch

from lightning_rlhf.label.cli import main as label_main
from lightning_rlhf.label.db import LabelDB
from lightning_rlhf.label.fill import fill_queue, rerank
from lightning_rlhf.label.selection import (
    disagreement_priority,
    priorities,
    uncertainty_priority,
)
from lightning_rlhf.rollout import SamplingOptions


def test_priorities_against_hand_computed_values():
    r_a, r_b = torch.tensor([1.0, 0.5, -2.0]), torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(uncertainty_priority(r_a, r_b), torch.tensor([-1.0, 0.0, -3.0]))
    # margins per member: pair 0 (1, 3) -> std 1; pair 1 (2, 2) -> 0
    s_a = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    s_b = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(disagreement_priority(s_a, s_b), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="needs \\(n >= 2, B\\)"):
        disagreement_priority(s_a[:1], s_b[:1])
    with pytest.raises(ValueError, match="needs at least 2 --reward"):
        priorities("disagreement", ["p"], ["a"], ["b"], ["one_rm"])
    assert priorities("random", list("xyz"), list("abc"), list("def"), seed=3) == priorities(
        "random", list("xyz"), list("abc"), list("def"), seed=3
    )


def test_fill_samples_once_stores_models_and_options(
    tmp_path, tiny_model_dir, task_dir, one_thread
):
    db = LabelDB(tmp_path / "labels.sqlite")
    sampling = SamplingOptions(max_new_tokens=6, temperature=1.0)
    prompts = str(task_dir / "prompts_val.jsonl")
    counts = fill_queue(
        db, tiny_model_dir, prompts, num_pairs=6, sampling=sampling, overlap=2, overlap_share=0.5
    )
    assert counts["queued"] + counts["identical"] == 6 and counts["queued"] >= 4
    row = db.conn.execute("SELECT model, sampling FROM responses LIMIT 1").fetchone()
    assert row["model"].endswith("tiny") and json.loads(row["sampling"])["max_new_tokens"] == 6
    assert {w for (w,) in db.conn.execute("SELECT want FROM pairs")} <= {1, 2}
    again = fill_queue(db, tiny_model_dir, prompts, num_pairs=counts["queued"], sampling=sampling)
    assert again["queued"] == 0  # the same command twice samples nothing new
    assert rerank(db, "random", seed=1) == counts["queued"]


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("", [], "is empty"),
        ('{"question": "q"}\n', [], "missing column(s) ['prompt']"),
        ('{"prompt": "q"}\n', ["--policy", "/nonexistent/policy"], "could not be loaded"),
        ('{"prompt": "q"}\n', ["--host", "0.0.0.0"], "pass --annotators"),
    ],
)
def test_bad_inputs_are_named(tmp_path, tiny_model_dir, capsys, content, args, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    argv = [
        "--db",
        str(tmp_path / "l.sqlite"),
        "--policy",
        tiny_model_dir,
        "--prompts",
        str(prompts),
        "--fill-only",
        *args,
    ]
    with pytest.raises(SystemExit) as exit_:
        label_main(argv)
    assert message in str(exit_.value)


def test_newer_database_named_by_the_cli(tmp_path):
    LabelDB(tmp_path / "l.sqlite").close()
    con = sqlite3.connect(tmp_path / "l.sqlite")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    with pytest.raises(SystemExit, match="schema version 99"):
        label_main(["stats", "--db", str(tmp_path / "l.sqlite")])


def test_uncertainty_and_disagreement_read_the_reward_models(monkeypatch):
    import lightning_rlhf.label.selection as selection

    scores = {"a": [[2.0, 0.0], [0.0, 0.0]], "b": [[0.0, 0.1], [2.0, 0.0]]}  # (members, pairs)
    monkeypatch.setattr(
        selection, "_member_scores", lambda rewards, prompts, texts: torch.tensor(scores[texts[0]])
    )
    # member means: A (1, 0), B (1, 0.05) -> −|margin| = (0, −0.05); margins per member:
    # pair 0 (2, −2) -> std 2, pair 1 (−0.1, 0) -> std 0.05
    got = priorities("uncertainty", ["p", "q"], ["a", "a"], ["b", "b"], ["rm1", "rm2"])
    assert got == pytest.approx([0.0, -0.05])
    got = priorities("disagreement", ["p", "q"], ["a", "a"], ["b", "b"], ["rm1", "rm2"])
    assert got == pytest.approx([2.0, 0.05])


def test_fill_only_through_the_command(tmp_path, tiny_model_dir, task_dir, capsys, one_thread):
    db = tmp_path / "l.sqlite"
    argv = [
        "--db",
        str(db),
        "--policy",
        tiny_model_dir,
        "--against",
        tiny_model_dir,
        "--prompts",
        str(task_dir / "prompts_val.jsonl"),
        "--num-pairs",
        "3",
        "--max-new-tokens",
        "4",
        "--fill-only",
    ]
    label_main(argv)
    counts = json.loads(capsys.readouterr().out.split("queue: ")[1])
    assert counts["queued"] + counts["identical"] == 3
    argv[argv.index("--num-pairs") + 1] = str(counts["queued"])  # identical pairs were not kept
    label_main(argv)  # the queue already holds that many: nothing new sampled
    assert json.loads(capsys.readouterr().out.split("queue: ")[1])["queued"] == 0
    assert (
        sqlite3.connect(db).execute("SELECT COUNT(*) FROM pairs").fetchone()[0] == counts["queued"]
    )
