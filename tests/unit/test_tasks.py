import random

import pytest

from lightning_rlhf.tasks import corrupt, sample_problems, score, solve, write_task_data
from lightning_rlhf.tasks.suite import is_held_out


def test_oracle_solves_each_task():
    assert solve("47+38=") == "85"
    assert solve("rev cbda=") == "adbc"
    assert solve("cnt b abbcb=") == "3"
    assert solve("what is love") is None


def test_score_exact_match_up_to_newline_and_spaces():
    assert score("47+38=", "85") == 1.0
    assert score("47+38=", " 85 \nmore") == 1.0
    assert score("47+38=", "84") == 0.0
    assert score("47+38=", "850") == 0.0
    with pytest.raises(ValueError, match="not a prompt of the bundled task"):
        score("hello", "85")


def test_splits_are_disjoint_and_deterministic():
    train = sample_problems(2000, seed=1, held_out=False)
    val = sample_problems(300, seed=2, held_out=True)
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert all(is_held_out(p.prompt, 0.1) for p in val)
    assert sample_problems(50, seed=1, held_out=False) == train[:50]
    assert {p.task for p in train} == {"add", "rev", "cnt"}


def test_corruptions_are_always_wrong():
    rng = random.Random(0)
    for p in sample_problems(3000, seed=3, held_out=False):
        assert score(p.prompt, corrupt(p, rng)) == 0.0


def test_write_task_data_same_seed_same_bytes(tmp_path):
    a = write_task_data(tmp_path / "a", seed=5, scale=0.01)
    write_task_data(tmp_path / "b", seed=5, scale=0.01)
    for name in a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["sft_train.jsonl"] == 200 and a["prompts_val.jsonl"] == 500


def test_noisy_demonstrator_makes_its_habitual_mistakes_at_the_given_rate():
    from lightning_rlhf.tasks.suite import demonstrate, habitual_mistake

    rng = random.Random(0)
    problems = sample_problems(4000, seed=4, held_out=False)
    wrong = {"add": 0, "rev": 0, "cnt": 0}
    total = {"add": 0, "rev": 0, "cnt": 0}
    for p in problems:
        answer = demonstrate(p, rng, noise=0.5)
        total[p.task] += 1
        if answer != p.answer:
            assert answer == habitual_mistake(p) and score(p.prompt, answer) == 0.0
            wrong[p.task] += 1
    assert wrong["add"] == 0
    for task in ("rev", "cnt"):  # 0.5 ± 4 standard errors of ~1000 draws
        assert abs(wrong[task] / total[task] - 0.5) < 0.07
    assert all(demonstrate(p, rng, noise=0.0) == p.answer for p in problems[:200])


def test_preference_pairs_include_the_demonstrators_mistakes(tmp_path):
    import json

    write_task_data(tmp_path / "d", seed=3, scale=0.05)
    rows = [json.loads(line) for line in (tmp_path / "d/pref_train.jsonl").read_text().splitlines()]
    habits = sum(r["task"] == "rev" and r["rejected"] == r["chosen"][:-1] for r in rows)
    assert habits > 0.1 * sum(r["task"] == "rev" for r in rows)
    assert all(
        r["chosen"] == solve(r["prompt"]) and score(r["prompt"], r["rejected"]) == 0 for r in rows
    )
