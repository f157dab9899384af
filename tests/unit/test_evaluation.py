"""Evaluation: the statistics against hand-computed values, and the runners on tiny fixtures."""

import json
import math

import pytest
import torch

from lightning_rlhf.evaluation import rm_metrics, stats


def test_bootstrap_of_a_constant_is_the_constant():
    iv = stats.bootstrap_mean([2.0, 2.0, 2.0], num_resamples=50)
    assert (iv.value, iv.low, iv.high, iv.n) == (2.0, 2.0, 2.0, 3)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 100 prompts, half scored 1: mean 0.5, standard error sqrt(0.25 / 100) = 0.05, so the 95 %
    # interval is close to 0.5 ± 1.96 · 0.05 = [0.402, 0.598]
    iv = stats.bootstrap_mean([0.0, 1.0] * 50, num_resamples=4000, seed=3)
    assert iv.value == 0.5
    assert iv.low == pytest.approx(0.402, abs=0.015)
    assert iv.high == pytest.approx(0.598, abs=0.015)
    again = stats.bootstrap_mean([0.0, 1.0] * 50, num_resamples=4000, seed=3)
    assert (again.low, again.high) == (iv.low, iv.high)  # a fixed seed reproduces the report


def test_win_rate_counts_ties_as_half():
    w = stats.win_rate([3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 3.0, 4.0], num_resamples=20)
    assert (w.wins, w.ties, w.losses) == (2, 1, 1)
    assert w.win_rate.value == pytest.approx((2 + 0.5) / 4)
    within = stats.win_rate([1.0, 2.0], [1.05, 0.0], tie_margin=0.1, num_resamples=20)
    assert (within.wins, within.ties, within.losses) == (1, 1, 0)


def test_length_controlled_win_rate_removes_the_length_effect():
    # at Δlength = −1 A wins 5 of 10; at +1, 9 of 10. The saturated logistic model has
    # logit(0.5) = w0 − w1·c and logit(0.9) = w0 + w1·c, so w0 = log(9) / 2 and the win rate at
    # equal length is σ(w0) = 3 / 4, while the raw win rate is 14 / 20
    a = [1.0] * 5 + [0.0] * 5 + [1.0] * 9 + [0.0]
    b = [0.5] * 20
    la, lb = [4] * 10 + [6] * 10, [5] * 20
    assert stats.win_rate(a, b, num_resamples=10).win_rate.value == pytest.approx(0.7)
    lc = stats.length_controlled_win_rate(a, b, la, lb, num_resamples=30)
    assert lc.value == pytest.approx(0.75, abs=1e-6)
    assert lc.low <= lc.value <= lc.high
    rows = stats.win_rate_by_length(a, b, la, lb, edges=(0,))
    assert rows == [
        {"bucket": "[-inf, 0)", "n": 10, "win_rate": 0.5},
        {"bucket": "[0, inf)", "n": 10, "win_rate": 0.9},
    ]


def test_pearson():
    assert stats.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_pairwise_and_best_of_n_accuracy():
    assert rm_metrics.pairwise_correct(torch.tensor([1.0, 0.0, -2.0])).tolist() == [1, 0, 0]
    correct = rm_metrics.best_of_n_correct(
        [[2.0], [2.0], [2.0, 1.0]], [[1.0, 1.5, 3.0], [1.0, 0.0, 1.9], [1.5]]
    )
    assert correct.tolist() == [0.0, 1.0, 0.0]  # the third: its worst chosen is below a rejected


def test_ties_score_by_hand():
    rows = [
        {"kind": "ref", "prompt_id": "0", "correct": [3.0], "incorrect": [1.0, 2.0]},
        {"kind": "tied", "prompt_id": "0", "correct": [3.0, 2.5], "incorrect": [1.0, 0.0]},
        {"kind": "ref", "prompt_id": "1", "correct": [0.0], "incorrect": [1.0]},
        {"kind": "tied", "prompt_id": "1", "correct": [2.0, 0.0], "incorrect": [1.0]},
    ]
    out = rm_metrics.ties_score(rows)
    # prompt 0: ref margin 1, tied spread 0.5 and margin 1.5: accurate, preferred, hard, tanh(1/0.5 − 1)
    # prompt 1: ref margin −1, tied spread 2 and margin −1: none, tanh(−1/2 − 1)
    m = (math.tanh(1.0) + math.tanh(-1.5)) / 2
    assert out["accuracy_ref"] == out["accuracy_tied"] == 0.5
    assert out["correctness_preferred"] == out["correctness_preferred_hard"] == 0.5
    assert out["correctness_margin"] == pytest.approx(m)
    assert out["score"] == pytest.approx(0.3 * 0.5 * 2 + 0.2 * 0.5 * 2 + 0.01 * m)


def test_calibration_by_hand():
    margins = torch.tensor([2.0, -2.0, 0.1, 3.0])
    out = rm_metrics.calibration(margins, num_bins=10)
    s = torch.sigmoid(torch.tensor([2.0, 0.1, 3.0], dtype=torch.float64)).tolist()
    assert [(b["n"], b["accuracy"]) for b in out["bins"]] == [(1, 1.0), (2, 0.5), (1, 1.0)]
    expected = 0.25 * abs(1 - s[1]) + 0.5 * abs(0.5 - s[0]) + 0.25 * abs(1 - s[2])
    assert out["ece"] == pytest.approx(expected)


def test_length_bias():
    out = rm_metrics.length_bias([2.0, 1.0], [1.0, 3.0], [10, 5], [5, 10])
    assert out["longer_preferred"] == 1.0  # both pairs: the longer response scored higher
    assert out["margin_length_corr"] == pytest.approx(1.0)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def length_reward(prompts, responses):
    """A reward that is the response's length: a transparent stand-in for a reward model."""
    return torch.tensor([float(len(r)) for r in responses])


def test_reward_model_evaluation_on_both_rewardbench_layouts(tmp_path):
    from lightning_rlhf.evaluation.reward_eval import evaluate_reward_model
    from lightning_rlhf.rewards import as_reward

    v1 = _write(
        tmp_path / "v1.jsonl",
        [
            {"prompt": "p", "chosen": "long answer", "rejected": "short", "subset": "chat"},
            {"prompt": "p", "chosen": "no", "rejected": "longer", "subset": "chat"},
            {"prompt": "q", "chosen": "abcdef", "rejected": "abc", "subset": "math"},
            {"prompt": "q", "chosen": "same", "rejected": "same", "subset": "math"},  # dropped
        ],
    )
    result = evaluate_reward_model(as_reward(length_reward), v1)
    assert result["rows"] == 3
    assert result["accuracy"]["all"]["value"] == pytest.approx(2 / 3)
    assert result["accuracy"]["chat"]["value"] == 0.5
    assert result["accuracy"]["math"]["value"] == 1.0
    assert result["length"]["longer_preferred"] == 1.0
    v2 = _write(
        tmp_path / "v2.jsonl",
        [
            {"prompt": "p", "chosen": ["aaaa"], "rejected": ["a", "aa", "aaa"], "subset": "x"},
            {"prompt": "p", "chosen": ["aa"], "rejected": ["a", "aaa", "b"], "subset": "x"},
            {"id": "ref:1", "prompt": "t", "chosen": ["xxx"], "rejected": ["x"], "subset": "Ties"},
            {"id": "tied:1", "prompt": "t", "chosen": ["xxx", "yy"], "rejected": ["x"],
             "subset": "Ties"},
        ],
    )  # fmt: skip
    result = evaluate_reward_model(as_reward(length_reward), v2)
    assert result["accuracy"]["x"]["value"] == 0.5  # best of 4: the second row's chosen is beaten
    # ties: both accurate; spread 1 and margins 2 (ref), 1 (tied): preferred? 1 > 1 no; hard: no
    assert result["ties"]["accuracy_ref"] == result["ties"]["accuracy_tied"] == 1.0
    assert result["ties"]["correctness_preferred"] == 0.0
    assert result["ties"]["score"] == pytest.approx(0.6 + 0.01 * math.tanh(0.0))


def test_reward_model_scores_do_not_move_with_batch_size(tiny_model_dir, tmp_path, one_thread):
    from lightning_rlhf.evaluation.reward_eval import evaluate_reward_model
    from lightning_rlhf.models import load_scalar_model, load_tokenizer
    from lightning_rlhf.rewards import RewardModel

    tok = load_tokenizer(tiny_model_dir)
    rm_dir = tmp_path / "rm"
    load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    rows = [
        {"prompt": f"{i}+{i}=", "chosen": str(2 * i) + "x" * (i % 5), "rejected": "0"}
        for i in range(1, 40)
    ]
    result = evaluate_reward_model(RewardModel(str(rm_dir)), _write(tmp_path / "p.jsonl", rows))
    assert result["batch_invariance_max_abs_diff"] < 1e-4
    assert 0.0 <= result["pairwise_accuracy"]["value"] <= 1.0
    assert sum(b["n"] for b in result["calibration"]["bins"]) == 39


def test_win_rate_of_a_policy_against_itself_is_all_ties(tiny_model_dir, task_dir, one_thread):
    from lightning_rlhf.evaluation.policy_eval import evaluate_policies

    prompts = str(task_dir / "prompts_val.jsonl")
    result = evaluate_policies(
        tiny_model_dir, prompts, reward="oracle", against=tiny_model_dir, limit=24
    )
    s = result.summary
    assert s["num_prompts"] == 24
    assert s["win_rate"]["ties"] == 24  # greedy answers of one model are identical
    assert s["win_rate"]["win_rate"]["value"] == 0.5
    assert set(s["policy"]["by_group"]) <= {"add", "rev", "cnt"}
    assert len(result.records) == 24 and "response" in result.records[0]["policy"][0]


def test_reward_spec_errors_name_the_value():
    from lightning_rlhf.evaluation.policy_eval import parse_reward

    with pytest.raises(ValueError, match="nowhere:thing"):
        parse_reward("nowhere:thing")
    with pytest.raises(ValueError, match="not 'oracle'"):
        parse_reward("no-such-dir")
    assert parse_reward("tests.unit.test_evaluation:length_reward")(["p"], ["abc"]).item() == 3.0


def test_policy_evaluation_callback_logs_score_and_win_rate(tiny_model_dir, task_dir, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_rlhf.callbacks.evaluation import PolicyEvaluation
    from lightning_rlhf.data.sft import SFTDataModule
    from lightning_rlhf.modules.sft import SFTModule

    prompts = str(task_dir / "prompts_val.jsonl")
    callback = PolicyEvaluation(prompts, "oracle", against=tiny_model_dir, every_n_steps=2, limit=8)
    dm = SFTDataModule(
        train_path=str(task_dir / "sft_train.jsonl"), val_path=None, val_fraction=0.0,
        tokenizer=tiny_model_dir, batch_size=4,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(SFTModule(tiny_model_dir), dm)
    from cli_runner import read_metrics

    logged = read_metrics(tmp_path)
    steps = sorted(s for s, m in logged.items() if "eval/score" in m)
    assert steps == [0, 2]  # at fit start, then each multiple of every_n_steps
    assert logged[0]["eval/win_rate"] == 0.5  # before any step: the same model as "against"
    assert 0.0 <= logged[2]["eval/win_rate"] <= 1.0
    (table,) = tmp_path.rglob("samples/eval_samples.jsonl")
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] * 8 + [2] * 8  # 8 logged samples per evaluation


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    """A scalar-head model on the tiny backbone, saved as a reward-stage export would be."""
    from lightning_rlhf.models import load_scalar_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    out = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_evaluate_command_prints_the_win_rate_and_writes_the_report(
    tiny_model_dir, task_dir, rm_dir, tmp_path, capsys, one_thread
):
    from lightning_rlhf.cli import main

    out = tmp_path / "eval"
    main(["evaluate", tiny_model_dir, "--against", tiny_model_dir, "--reward", rm_dir,
          "--prompts", str(task_dir / "prompts_val.jsonl"), "--limit", "16", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "win rate 0.500" in printed and "(0 wins, 16 ties, 0 losses)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["num_prompts"] == 16 and len((out / "records.jsonl").read_text().splitlines()) == 16
    )
    report = (out / "report.md").read_text()
    assert "**Win rate**" in report and (out / "win_rate_by_length.png").stat().st_size > 0


def test_evaluate_rm_command_on_the_task_rewardbench_file(task_dir, rm_dir, tmp_path, capsys):
    from lightning_rlhf.cli import main

    out = tmp_path / "rm_eval"
    main(["evaluate-rm", rm_dir, "--data", str(task_dir / "rewardbench_val.jsonl"),
          "--limit", "60", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    for subset in ("add", "cnt", "rev", "all"):
        assert f"accuracy {subset}:" in printed
    assert (out / "calibration.png").stat().st_size > 0
    result = json.loads((out / "result.json").read_text())
    assert sum(b["n"] for b in result["calibration"]["bins"]) == 60
    main(
        ["evaluate-rm", rm_dir, "--data", str(task_dir / "rewardbench2_val.jsonl"), "--limit", "30"]
    )
    assert "completions_per_row" in capsys.readouterr().out


def test_every_command_is_listed_in_help(capsys):
    from lightning_rlhf.cli import COMMANDS, TOOLS, print_commands

    print_commands()
    printed = capsys.readouterr().out
    assert all(name in COMMANDS for name in TOOLS)
    assert all(name in printed for name in [*TOOLS, "fit"])
