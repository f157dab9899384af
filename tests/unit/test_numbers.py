"""Numbers that must not pass quietly, and data errors that must name the thing (issue 25).

Non-finite weights before a checkpoint or an export, an endless ``nan_policy: skip``, a degenerate
``reward_stats.json``, preference pairs that truncation makes identical, PPO prompts longer than
the reward model's context, greedy PPO rollouts, CSV cells read as numbers, and a data directory
of mixed files. Each test's docstring reads "<bad input> -> <what it gets>" (the reliability table
in docs/reliability.md is generated from them).
"""

import csv
import json
import logging
import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rlhf.critics import ValueHead
from lightning_rlhf.data import PreferenceDataModule, SFTDataModule
from lightning_rlhf.data.load import load_split
from lightning_rlhf.data.preference import fit_pair
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.data.text import encode_completion, encode_prompt
from lightning_rlhf.models import export_hf, load_scalar_model, load_tokenizer
from lightning_rlhf.modules.ppo import PPOModule, PPOOptions
from lightning_rlhf.modules.reward import RewardModule
from lightning_rlhf.modules.sft import SFTModule
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rewards import RewardFunction, RewardModel
from lightning_rlhf.rollout import SamplingOptions

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINER = dict(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
    limit_val_batches=0, num_sanity_val_steps=0,
)  # fmt: skip


def sft_data(task_dir, tiny_model_dir):
    path = str(task_dir / "sft_train.jsonl")
    return SFTDataModule(path, None, tiny_model_dir, val_fraction=0.0, batch_size=4)


class InfOnStep(torch.optim.SGD):
    """SGD whose ``bad_step``-th step ends by writing Inf into the first weight tensor: an
    optimizer step that overflowed."""

    def __init__(self, params, bad_step: int = 2):
        super().__init__(params, lr=1e-3)
        self.bad_step, self.count = bad_step, 0

    @torch.no_grad()
    def step(self, closure=None):
        out = super().step(closure)
        self.count += 1
        if self.count == self.bad_step:
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out


# ------------------------------------------------------------------------- item 7: weights
@pytest.mark.parametrize("nan_policy", ["raise", "skip"])
def test_inf_weights_from_an_optimizer_step_never_reach_a_checkpoint_or_export(
    tiny_model_dir, task_dir, tmp_path, nan_policy
):
    """Optimizer step writes Inf into weights -> stops before the checkpoint; none written, no export"""
    module = SFTModule(tiny_model_dir, optimizer=InfOnStep, nan_policy=nan_policy)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(**TRAINER, max_steps=4, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match=r"non-finite weights \(1 of \d+ parameter"):
        trainer.fit(module, datamodule=sft_data(task_dir, tiny_model_dir))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # the inf came with step 2: its checkpoint was refused
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    with pytest.raises(FloatingPointError, match="not exported"):
        module.export(tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "nan_policy, expected",
    [
        ("raise", r"non-finite loss .* caused by non-finite weights \(1 of"),
        ("skip", r"non-finite weights \(1 of .* cannot skip past it"),
    ],
)
def test_inf_weights_without_checkpoints_are_named_at_the_next_loss(
    tiny_model_dir, task_dir, tmp_path, nan_policy, expected
):
    """Inf weights, no checkpoint -> the NaN loss that follows names the weights; skip cannot pass"""
    module = SFTModule(tiny_model_dir, optimizer=InfOnStep, nan_policy=nan_policy)
    trainer = L.Trainer(**TRAINER, max_steps=6, enable_checkpointing=False)
    with pytest.raises(FloatingPointError, match=expected):
        trainer.fit(module, datamodule=sft_data(task_dir, tiny_model_dir))
    assert trainer.global_step == 2


# ------------------------------------------------------------------------- item 8: skips
class AlwaysNaN(RewardFunction):
    def __call__(self, prompts, responses):
        return torch.full((len(responses),), float("nan"))


def test_ppo_with_an_always_nan_reward_under_skip_stops(tiny_model_dir, task_dir, tmp_path):
    """PPO reward always NaN under skip -> stops after 10 skipped iterations, naming rewards, count"""
    module = PPOModule(
        tiny_model_dir, reward=AlwaysNaN(), critic=ValueHead(), nan_policy="skip",
        sampling=SamplingOptions(max_new_tokens=4), ppo=PPOOptions(ppo_epochs=1, num_minibatches=1),
        schedule=ScheduleOptions(warmup_steps=0, decay="constant"), log_samples_every_n_iterations=0,
    )  # fmt: skip
    assert module.max_consecutive_skips == 10
    data = PromptDataModule(
        str(task_dir / "prompts_train.jsonl"), None, tiny_model_dir, val_fraction=0.0,
        batch_size=8, max_prompt_length=32,
    )  # fmt: skip
    calls = []
    module.make_rollout = partial(lambda f, b: (calls.append(1), f(b))[1], module.make_rollout)
    trainer = L.Trainer(
        **TRAINER, max_epochs=3, limit_train_batches=5, enable_checkpointing=False,
        use_distributed_sampler=False,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"skipped 10 steps in a row \(non-finite rewards"):
        trainer.fit(module, datamodule=data)
    assert len(calls) == 10 and trainer.global_step == 0


def test_sft_loss_always_nan_under_skip_stops(tiny_model_dir, task_dir):
    """SFT loss always NaN under skip -> stops after max_consecutive_skips, naming the loss"""
    module = SFTModule(tiny_model_dir, nan_policy="skip", max_consecutive_skips=3)
    loss = module._loss
    module._loss = lambda batch: (lambda value, stats: (value * math.nan, stats))(*loss(batch))
    trainer = L.Trainer(**TRAINER, max_steps=20, enable_checkpointing=False)
    with pytest.raises(FloatingPointError, match=r"skipped 3 steps in a row \(non-finite loss 3"):
        trainer.fit(module, datamodule=sft_data(task_dir, tiny_model_dir))
    with pytest.raises(ValueError, match="max_consecutive_skips must be at least 1, got 0"):
        SFTModule(tiny_model_dir, max_consecutive_skips=0)


# ------------------------------------------------------------------------- item 9: stats
@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_model_dir):
    torch.manual_seed(0)
    model = load_scalar_model(tiny_model_dir, pad_token_id=0)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    out = tmp_path_factory.mktemp("rm") / "rm"
    return Path(export_hf(model, load_tokenizer(tiny_model_dir), out))


CASES = [
    ("std_zero", 'reward_stats.json with "std": 0', "refused at read, naming the file"),
    ("std_negative", 'reward_stats.json with "std": -1', "refused at read, naming the file"),
    ("std_tiny", 'reward_stats.json with "std": 3.8e-9', "refused at read, naming the file"),
    ("std_nan", 'reward_stats.json with "std": NaN', "refused, naming the file and the key"),
    ("no_std", "reward_stats.json without a std key", "refused, naming the file and the key"),
    ("not_json", "reward_stats.json that is not JSON", "refused, naming the file"),
    ("a_list", "reward_stats.json holding a list", "refused, naming the file"),
]
STATS = {
    "std_zero": ('{"mean": 0.5, "std": 0}', "std 0 is below 0.0001"),
    "std_negative": ('{"mean": 0.5, "std": -1}', "std -1 is below"),
    "std_tiny": ('{"mean": 0.5, "std": 3.8e-9}', "std 3.8e-09 is below"),
    "std_nan": ('{"mean": 0.5, "std": NaN}', "'std' must be a finite number"),
    "no_std": ('{"mean": 0.5}', "no 'std' key"),
    "not_json": ("mean=0.5 std=1", "not valid JSON"),
    "a_list": ("[0.5, 1.0]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bad_reward_stats_are_refused_when_read(rm_dir, case):
    text, message = STATS[case]
    path = rm_dir / "reward_stats.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: .*{message}.*normalize: false"):
        RewardModel(str(rm_dir))
    RewardModel(str(rm_dir), normalize=False)  # the fix the message gives
    path.write_text('{"mean": 100.0, "std": 0.02}')  # 2e-4 of |mean|: above the floor
    assert (RewardModel(str(rm_dir)).mean, RewardModel(str(rm_dir)).std) == (100.0, 0.02)


def test_reward_stage_refuses_to_write_a_degenerate_std(tiny_model_dir, tmp_path):
    """Reward stage whose validation rewards have std 3.8e-9 -> export refused, naming the file"""
    module = RewardModule(tiny_model_dir)
    module.configure_model()
    module.reward_stats = {"val_accuracy": 0.5, "mean": -0.3, "std": 3.8e-9, "count": 20}
    with pytest.raises(ValueError, match=r"reward_stats.json \(from 20 validation rewards\): std"):
        module.export(tmp_path / "rm")
    assert not (tmp_path / "rm").exists()
    with pytest.raises(ValueError, match="not exported"):
        module.on_train_end()


# ------------------------------------------------------------------------- item 10: ties
def pairs(path, n_tied, n_distinct):
    tail = " and then the same long ending" * 3
    rows = [{"prompt": "q=", "chosen": f"yes{i}" + tail, "rejected": f"no{i}" + tail}
            for i in range(n_tied)]  # fmt: skip
    rows += [{"prompt": "q=", "chosen": "a", "rejected": "b"} for _ in range(n_distinct)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pairs_identical_after_truncation_are_dropped_and_counted(tmp_path, tiny_model_dir, caplog):
    """Preference pairs made identical by truncation -> dropped, counted in a warning with max_length"""
    dm = PreferenceDataModule(
        pairs(tmp_path / "p.jsonl", 2, 3), None, tiny_model_dir, val_fraction=0, max_length=16
    )
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.train_set) == 3
    assert "dropped 2 pairs (identical once cut to max_length 16)" in caplog.text


def test_most_pairs_identical_after_truncation_are_refused(tmp_path, tiny_model_dir):
    """Most preference pairs identical after truncation -> refused, naming the file and max_length"""
    path = pairs(tmp_path / "p.jsonl", 20, 0)
    dm = PreferenceDataModule(path, None, tiny_model_dir, val_fraction=0, max_length=16)
    with pytest.raises(ValueError, match=r"p.jsonl.*20 of 20 pairs .* max_length 16.*raise data"):
        dm.setup("fit")


# ------------------------------------------------------------------------- item 11: context
def test_long_prompt_reaches_the_reward_as_the_policy_saw_it(tmp_path, tiny_model_dir, caplog):
    """PPO prompt longer than max_prompt_length -> the reward gets the text the policy saw"""
    long = "".join(f"{i % 10}" for i in range(2000)) + "="
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [long, "1+2="]))
    dm = PromptDataModule(
        str(path), None, tiny_model_dir, val_fraction=0.0, batch_size=1, max_prompt_length=32
    )
    dm.setup("fit")
    seen = dm.train_set[0]
    assert len(seen["prompt_ids"]) == 32 and seen["prompt"] == long[-32:]
    assert dm.train_set[1]["prompt"] == "1+2="  # an untruncated prompt keeps its text


def test_reward_model_cuts_to_its_context_and_counts(rm_dir, caplog):
    """Prompt + response beyond the reward model's context -> cut as in reward training, counted"""
    (rm_dir / "reward_stats.json").unlink(missing_ok=True)
    rm = RewardModel(str(rm_dir), normalize=False)
    assert rm.max_length == 128  # the tiny model's max_position_embeddings
    long, short = "7" * 2000 + "=", "1+2="
    with caplog.at_level(logging.WARNING):
        scores = rm([long, short], ["42", "3"])
    assert "1 of 2 (prompt, response) texts are longer than its 128 tokens" in caplog.text
    assert rm.stats() == {"truncated": 1.0}
    tok = rm.tokenizer
    ids = fit_pair(encode_prompt(tok, long), encode_completion(tok, "42"), 128)
    expected = rm([tok.decode(ids[:-3], skip_special_tokens=True)], ["42"])  # 2 digits + EOS
    torch.testing.assert_close(scores[:1], expected)
    assert torch.isfinite(scores).all()


# ------------------------------------------------------------------------- item 12: greedy
def test_ppo_with_greedy_rollouts_is_refused(tiny_model_dir):
    """PPO sampling.temperature 0 -> refused when built, naming the field (eval_sampling may be 0)"""
    with pytest.raises(ValueError, match=r"model.sampling.temperature: 0 .* greedy"):
        PPOModule(tiny_model_dir, reward=AlwaysNaN(), sampling=SamplingOptions(temperature=0.0))
    module = PPOModule(
        tiny_model_dir, reward=AlwaysNaN(), critic=ValueHead(),
        eval_sampling=SamplingOptions(temperature=0.0),
    )  # fmt: skip
    assert module.eval_sampling.temperature == 0.0


# ------------------------------------------------------------------------- data errors
def test_csv_cells_are_read_as_text(tmp_path, tiny_model_dir, caplog):
    """CSV answers 046, NA, null, None -> read as text and trained on; an empty cell counted"""
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(
            [["prompt", "completion"], ["12+34=", "046"], ["a=", "NA"], ["b=", "null"],
             ["c=", "None"], ["d=", ""]]
        )  # fmt: skip
    ds = load_split(str(path))
    assert ds["completion"] == ["046", "NA", "null", "None", ""]
    dm = SFTDataModule(str(path), None, tiny_model_dir, val_fraction=0.0, batch_size=1)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.train_set) == 4 and "1 rows dropped" in caplog.text


def test_ragged_csv_names_the_row(tmp_path):
    """CSV row with more fields than the header -> refused, naming the file and the row"""
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\n1+2=,3\n2+2=,4,5\n")
    with pytest.raises(ValueError, match=r"d.csv: row 2 \(after the header\) has 3 fields"):
        load_split(str(path))


def test_a_data_directory_of_mixed_files_is_refused(tmp_path):
    """Data path a directory of .csv, .jsonl and .txt files -> refused, naming the directory, kinds"""
    (tmp_path / "a.csv").write_text("prompt,completion\n1+2=,3\n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "x", "completion": "y"}\n')
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(ValueError, match=rf"{tmp_path}: .*1 csv \(a.csv\); 1 json \(b.jsonl\)"):
        load_split(str(tmp_path))
