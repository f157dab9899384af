"""DPO: the losses against hand-computed values, the response mask, the reference (frozen copy,
LoRA base, cache), validation metrics and export, and learning on the bundled task."""

import json
import math
import random
import warnings

import lightning as L
import pytest
import torch
from host_reads import HostReads
from torch.utils.data import DataLoader

from lightning_rlhf import DPOModule, PreferenceDataModule, TaskOracle
from lightning_rlhf.losses import dpo_loss, sequence_logprobs
from lightning_rlhf.models import LoraOptions, ModelOptions, load_causal_lm
from lightning_rlhf.modules.dpo import RowCache
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.tasks import corrupt, sample_problems
from lightning_rlhf.types import PromptBatch

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-6
EOS = 1  # the byte tokenizer: 0 pad, 1 EOS, byte b -> b + 3
TRAINER = dict(
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def b(text: str) -> list[int]:
    return [c + 3 for c in text.encode()]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def close(actual: torch.Tensor, expected, atol: float = ATOL) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# --- the losses -------------------------------------------------------------------------------

# two pairs: log-ratios chosen (0.5, 0.0), rejected (-1.0, 1.0), so h = (1.5, -1.0)
POLICY_C, POLICY_R = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
REF_C, REF_R = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.5])


def test_dpo_sigmoid_hand_values():
    loss, stats = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5)
    # beta * h = (0.75, -0.5)
    close(loss, -(log_sigmoid(0.75) + log_sigmoid(-0.5)) / 2)
    close(stats["dpo_loss"], loss)
    close(stats["chosen_reward"], 0.5 * (0.5 + 0.0) / 2)  # 0.125
    close(stats["rejected_reward"], 0.5 * (-1.0 + 1.0) / 2)  # 0.0
    close(stats["accuracy"], 0.5)  # 0.25 > -0.5, but 0.0 < 0.5
    close(stats["margin"], (0.75 - 0.5) / 2)
    close(stats["chosen_logratio"], 0.25)
    close(stats["rejected_logratio"], 0.0)


def test_dpo_label_smoothing_hand_values():
    loss, _ = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5, label_smoothing=0.2)
    expected = [-0.8 * log_sigmoid(x) - 0.2 * log_sigmoid(-x) for x in (0.75, -0.5)]
    close(loss, sum(expected) / 2)
    plain, _ = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5)
    assert (loss - plain).abs() > 1e-2  # the smoothing term counts


def test_ipo_hand_values():
    loss, stats = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.25, loss_type="ipo")
    close(loss, ((1.5 - 2.0) ** 2 + (-1.0 - 2.0) ** 2) / 2)  # target 1 / (2 * 0.25) = 2: 4.625
    close(stats["chosen_reward"], 0.25 * 0.25)
    close(stats["margin"], 0.25 * (1.5 - 1.0) / 2)


def test_policy_equal_to_reference_gives_log_two_and_no_accuracy():
    logps = torch.tensor([-4.0, -1.0, -2.5])
    loss, stats = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    close(loss, math.log(2))
    close(stats["accuracy"], 0.0)  # strict: a tie is not a win
    close(stats["margin"], 0.0)


def test_dpo_gradient_and_detached_reference():
    chosen, rejected = POLICY_C.clone().requires_grad_(), POLICY_R.clone().requires_grad_()
    ref_c, ref_r = REF_C.clone().requires_grad_(), REF_R.clone().requires_grad_()
    loss, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    loss.backward()
    # d/dx of -logsigmoid(beta h) / B is -beta * sigmoid(-beta h) / B, h = x_c - x_r + const
    sig = [1 / (1 + math.exp(x)) for x in (0.75, -0.5)]
    close(chosen.grad, [-0.5 * s / 2 for s in sig])
    close(rejected.grad, [0.5 * s / 2 for s in sig])
    assert ref_c.grad is None and ref_r.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta=0.0), "beta must be > 0"),
        (dict(beta=0.1, label_smoothing=0.5), r"label_smoothing must be in \[0, 0.5\)"),
        (dict(beta=0.1, loss_type="hinge"), "loss_type must be 'sigmoid' or 'ipo'"),
        (dict(beta=0.1, loss_type="ipo", label_smoothing=0.1), "'sigmoid' only"),
    ],
)
def test_dpo_options_are_checked(kwargs, message, tiny_model_dir):
    with pytest.raises(ValueError, match=message):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, **kwargs)
    with pytest.raises(ValueError, match=message):
        DPOModule(tiny_model_dir, **kwargs)


def test_sequence_logprobs_sums_response_tokens_after_the_shift():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.tensor([[3, 4, 5, 6, 0], [2, 2, 3, 1, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 0, 1, 1]])  # a response token at 0 has no context
    logp = torch.log_softmax(logits, dim=-1)
    expected = [
        logp[0, 1, 5] + logp[0, 2, 6],  # tokens 2 and 3, predicted at 1 and 2
        logp[1, 2, 1] + logp[1, 3, 1],  # tokens 3 and 4; token 0 is not counted
    ]
    close(sequence_logprobs(logits, ids, mask), torch.stack(expected), atol=1e-5)


# --- the data: response mask, index, prompts for generation -------------------------------------


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_collated_response_mask_and_index(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "11"},
        {"prompt": "rev abcdefghij=", "chosen": "jihgfedcba", "rejected": "xy"},
    ]
    dm = PreferenceDataModule(
        train_path=write_jsonl(tmp_path / "p.jsonl", rows),
        val_path=None,
        val_fraction=0,
        tokenizer=tiny_model_dir,
        max_length=8,
        batch_size=2,
    )
    dm.setup("fit")
    batch = next(iter(DataLoader(dm.train_set, dm.hparams.batch_size, collate_fn=dm._collate())))
    assert batch.index.tolist() == [0, 1]
    assert batch.input_ids[0, :6].tolist() == b("1+1=") + b("2") + [EOS]
    assert batch.response_mask.tolist() == [
        [0, 0, 0, 0, 1, 1, 0, 0],  # "2" + EOS
        [0, 1, 1, 1, 1, 1, 1, 1],  # truncated: one prompt token, the response's last 7 tokens
        [0, 0, 0, 0, 1, 1, 1, 0],  # "11" + EOS
        [0, 0, 0, 0, 0, 1, 1, 1],  # "xy" + EOS after the prompt's last 5 tokens
    ]


def test_num_val_prompts_serves_left_padded_prompts(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"{i}+{i}=", "chosen": "x", "rejected": "y"} for i in (1, 12, 3, 45, 6)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    dm = PreferenceDataModule(
        train_path=path, val_path=path, tokenizer=tiny_model_dir, num_val_prompts=3
    )
    dm.setup("fit")
    pairs, prompts = dm.val_dataloader()
    (batch,) = list(prompts)
    assert isinstance(batch, PromptBatch)
    assert batch.prompts == ["1+1=", "12+12=", "3+3="]
    assert batch.input_ids.tolist() == [[0, 0] + b("1+1="), b("12+12="), [0, 0] + b("3+3=")]
    assert len(next(iter(pairs)).prompts) == 5
    # without num_val_prompts the pairs come alone, as the reward stage expects
    alone = PreferenceDataModule(train_path=path, val_path=path, tokenizer=tiny_model_dir)
    alone.setup("fit")
    assert not isinstance(alone.val_dataloader(), list)
    with pytest.raises(ValueError, match="num_val_prompts must be >= 0"):
        PreferenceDataModule(tokenizer=tiny_model_dir, num_val_prompts=-1)


# --- the module: log-probs, reference, cache ---------------------------------------------------


@pytest.fixture
def pairs_file(task_dir, tmp_path):
    """Twelve pairs of the bundled task."""
    rows = [json.loads(line) for line in (task_dir / "pref_val.jsonl").read_text().splitlines()]
    return write_jsonl(tmp_path / "pairs.jsonl", rows[:12])


def pair_data(path, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(train_path=path, val_path=path, tokenizer=tokenizer_dir, **kwargs)
    dm.setup("fit")
    return dm


def perturb(model: torch.nn.Module, name_part: str = "", std: float = 0.05) -> None:
    """Move the policy away from the reference (in place), so the log-ratios are not zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name_part in name:
                p.add_(torch.randn_like(p) * std)


@torch.no_grad()
def direct_logps(model, data: list[dict], key: str) -> torch.Tensor:
    """Each sequence alone, unpadded: the sum of log-softmax at its response tokens."""
    out = []
    for e in data:
        ids, n = e[f"{key}_ids"], e[f"{key}_response_len"]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        out.append(sum(logp[t - 1, ids[t]] for t in range(len(ids) - n, len(ids))))
    return torch.stack(out)


def step(module, batch, stage="train"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        return module._step(batch, stage)


def test_step_scores_each_rows_response_against_the_frozen_copy(tiny_model_dir, pairs_file):
    module = DPOModule(tiny_model_dir, beta=0.3)
    module.configure_model()
    assert len(module._ref) == 1 and not any(p.requires_grad for p in module._ref[0].parameters())
    assert not any(k.startswith("_ref") for k in module.state_dict())
    perturb(module.model)
    module.model.eval()
    dm = pair_data(pairs_file, tiny_model_dir, batch_size=12)
    loss, stats = step(module, next(iter(dm.val_dataloader())))
    data, base = dm.val_set, load_causal_lm(tiny_model_dir).eval()
    pc, pr = (direct_logps(module.model, data, k) for k in ("chosen", "rejected"))
    rc, rr = (direct_logps(base, data, k) for k in ("chosen", "rejected"))
    expected, expected_stats = dpo_loss(pc, pr, rc, rr, beta=0.3)
    close(loss.detach(), expected, atol=1e-5)
    assert (pc - rc).abs().max() > 1e-2  # the policy moved: the reference is told apart
    close(stats["chosen_logratio"], expected_stats["chosen_logratio"], atol=1e-5)
    close(stats["policy_accuracy"], (pc > pr).float().mean())
    assert loss.requires_grad


def test_ipo_on_length_normalised_logprobs_is_trls_form(tiny_model_dir, pairs_file):
    """``average_logprobs``: IPO's h from each response's mean token log-prob (TRL's IPO), not
    the sum; the reference log-probs likewise."""
    module = DPOModule(tiny_model_dir, beta=0.3, loss_type="ipo", average_logprobs=True)
    module.configure_model()
    perturb(module.model)
    module.model.eval()
    dm = pair_data(pairs_file, tiny_model_dir, batch_size=12)
    loss, _ = step(module, next(iter(dm.val_dataloader())))
    data, base = dm.val_set, load_causal_lm(tiny_model_dir).eval()
    n = {
        k: torch.tensor([float(e[f"{k}_response_len"]) for e in data])
        for k in ("chosen", "rejected")
    }
    pc, pr = (direct_logps(module.model, data, k) / n[k] for k in ("chosen", "rejected"))
    rc, rr = (direct_logps(base, data, k) / n[k] for k in ("chosen", "rejected"))
    h = (pc - rc) - (pr - rr)
    close(loss.detach(), ((h - 1 / (2 * 0.3)) ** 2).mean(), atol=1e-5)
    module.average_logprobs = False  # the summed form, same model and data
    summed, _ = step(module, next(iter(dm.val_dataloader())))
    assert abs(summed.item() - loss.item()) > 1e-3  # the option changes the loss


def test_the_collated_response_positions_save_the_step_a_device_read_per_forward(
    tiny_model_dir, pairs_file
):
    module = DPOModule(tiny_model_dir, cache_ref_logprobs=False)  # policy and reference forwards
    module.configure_model()
    perturb(module.model)
    batch = next(iter(pair_data(pairs_file, tiny_model_dir, batch_size=6).val_dataloader()))
    rows, width = batch.response_mask.shape
    learned = torch.nn.functional.pad(batch.response_mask[:, 1:], (0, 1)).reshape(-1)
    assert torch.equal(batch.response_index, learned.nonzero().squeeze(1))
    assert batch.response_index.max() < rows * width
    with HostReads() as collated:
        loss, _ = step(module, batch)
    with HostReads() as found_in_step:
        expected, _ = step(module, batch._replace(response_index=None))
    assert found_in_step.count == collated.count + 2  # one nonzero per forward, two forwards
    close(loss.detach(), expected.detach(), atol=0)


def test_cached_reference_gives_the_recomputed_loss_and_is_read(tiny_model_dir, pairs_file):
    cached, fresh = DPOModule(tiny_model_dir), DPOModule(tiny_model_dir, cache_ref_logprobs=False)
    for module in (cached, fresh):
        module.configure_model()
        perturb(module.model)
        module.model.eval()
    dm = pair_data(pairs_file, tiny_model_dir, batch_size=5)
    first = list(
        DataLoader(dm.train_set, dm.hparams.batch_size, collate_fn=dm._collate())
    )  # batches of 5, 5 and 2 pairs
    shuffled = list(dm.train_dataloader())
    assert [x.index.tolist() for x in first] != [x.index.tolist() for x in shuffled]
    for batch in first:
        step(cached, batch)  # fills the cache
    assert not cached._ref_cache["train"].values[:12].isnan().any()
    for batch in shuffled:  # the same pairs in other batches, other rows, other padding
        close(step(cached, batch)[0].detach(), step(fresh, batch)[0].detach(), atol=1e-5)
    # the cache is what is read: a changed reference changes only the recomputed loss
    batch = shuffled[0]
    before = step(cached, batch)[0].detach()
    perturb(cached._ref[0], std=0.5)
    perturb(fresh._ref[0], std=0.5)
    close(step(cached, batch)[0].detach(), before)
    assert (step(fresh, batch)[0].detach() - before).abs() > 1e-3


def test_reference_with_another_tokenizer_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from lightning_rlhf.models import load_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tok = load_tokenizer(str(other))
    tok.pad_token = tok.eos_token  # pad id 1 instead of 0
    tok.save_pretrained(other)
    module = DPOModule(tiny_model_dir, ref_model_name_or_path=str(other))
    with pytest.raises(ValueError, match="reference .* has another tokenizer than the policy"):
        module.configure_model()
    copy = shutil.copytree(other, tmp_path / "copy")
    same = DPOModule(str(other), ref_model_name_or_path=str(copy))  # one tokenizer: accepted
    same.configure_model()
    assert len(same._ref) == 1


def test_row_cache_fills_missing_rows_and_grows():
    cache = RowCache()
    values, missing = cache.get(torch.tensor([3, 0]))
    assert missing.tolist() == [True, True] and len(cache.values) == 4
    cache.put(torch.tensor([3]), torch.tensor([[-1.0, -2.0]]))
    values, missing = cache.get(torch.tensor([0, 3, 9]))
    assert missing.tolist() == [True, False, True] and len(cache.values) == 10
    assert values[1].tolist() == [-1.0, -2.0]


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_model_dir, pairs_file):
    module = DPOModule(tiny_model_dir, model=ModelOptions(lora=LoraOptions(r=4)))
    module.configure_model()
    assert module._ref == []  # no second copy of the model
    perturb(module.model, "lora_B", std=0.5)  # trained adapters: the policy is not the base
    dm = pair_data(pairs_file, tiny_model_dir, batch_size=12)
    batch = next(iter(dm.val_dataloader()))
    module.model.train()
    ref = module.reference_logps(batch, "val")
    assert module.model.training  # restored after the reference's eval-mode pass
    base = load_causal_lm(tiny_model_dir).eval()
    data = dm.val_set
    close(ref, torch.cat([direct_logps(base, data, k) for k in ("chosen", "rejected")]), 1e-5)
    module.model.eval()
    policy = direct_logps(module.model, data, "chosen")  # the adapters are on again
    assert (policy - ref[:12]).abs().max() > 1e-2
    loss, _ = step(module, batch)
    loss.backward()
    grads = [p.grad for n, p in module.model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_validation_metrics_oracle_score_and_export(tiny_model_dir, pairs_file, tmp_path):
    module = DPOModule(tiny_model_dir, oracle=TaskOracle(), num_logged_samples=0)
    dm = PreferenceDataModule(
        train_path=pairs_file,
        val_path=pairs_file,
        tokenizer=tiny_model_dir,
        batch_size=5,
        num_val_prompts=7,
    )
    metrics = L.Trainer(**TRAINER).validate(module, dm, verbose=False)[0]
    # policy == reference: the loss is log 2 and the implicit rewards are zero
    assert metrics["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["val/chosen_reward"] == 0.0 and metrics["val/accuracy"] == 0.0
    data = dm.val_set
    pc = direct_logps(module.model, data, "chosen")
    pr = direct_logps(module.model, data, "rejected")
    wins = (pc > pr).float().mean().item()
    assert 0 < wins < 1  # a constant would not test the weighting over batches of 5, 5, 2
    assert metrics["val/policy_accuracy"] == pytest.approx(wins, abs=1e-6)
    assert metrics["val/oracle_score"] == 0.0  # the untrained model answers nothing right
    out = module.export(tmp_path / "dpo")
    stats = json.loads((out / "dpo_stats.json").read_text())
    assert stats["val/policy_accuracy"] == pytest.approx(wins, abs=1e-6)
    assert stats["val/oracle_score"] == 0.0 and (out / "model.safetensors").exists()


def test_validate_then_fit_the_same_module(tiny_model_dir, pairs_file):
    """A baseline validate() before fit(): the metrics' inference-mode states are renewed."""
    module = DPOModule(tiny_model_dir)
    dm = PreferenceDataModule(
        train_path=pairs_file, val_path=pairs_file, tokenizer=tiny_model_dir, batch_size=5
    )
    trainer = L.Trainer(**{**TRAINER, "max_steps": 2})
    before = trainer.validate(module, dm, verbose=False)[0]
    trainer.fit(module, dm)  # its sanity check updates the same metrics outside inference mode
    after = trainer.validate(module, dm, verbose=False)[0]
    assert before["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert after["val/loss"] != before["val/loss"]  # two steps moved the policy


# --- learning ---------------------------------------------------------------------------------


@torch.no_grad()
def policy_wins(module, dm) -> torch.Tensor:
    """(N,) 1.0 for each validation pair whose chosen response the policy finds likelier."""
    module.model.eval()
    wins = []
    for batch in dm.val_dataloader():
        logps = module._logps(
            module.model, batch.input_ids, batch.attention_mask, batch.response_mask
        )  # (2B,)
        chosen, rejected = logps.chunk(2)
        wins.append((chosen > rejected).float())
    return torch.cat(wins)


def write_task_pairs(path, n: int, held_out: bool, seed: int) -> str:
    """``n`` preference pairs of the bundled task (chosen correct, rejected a typical mistake)."""
    rng = random.Random(seed)
    problems = sample_problems(n, seed=seed, held_out=held_out)
    rows = [{"prompt": p.prompt, "chosen": p.answer, "rejected": corrupt(p, rng)} for p in problems]
    return write_jsonl(path, rows)


def test_short_fit_raises_the_policys_preference_accuracy(tiny_model_dir, tmp_path):
    """300 steps x 32 of 5000 pairs of the bundled task from the random tiny model (~10-15 s on
    2 cores), measured on 2000 held-out pairs.

    The gain must exceed three standard errors of the paired difference (about 0.012). Measured
    over shuffle seeds 0-5: +0.06 to +0.12 (5.0 to 9.4 standard errors); seed 0 gives +0.06.
    """
    module = DPOModule(
        tiny_model_dir,
        beta=0.1,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0),
        schedule=ScheduleOptions(warmup_steps=5),
    )
    dm = PreferenceDataModule(
        train_path=write_task_pairs(tmp_path / "train.jsonl", 5000, held_out=False, seed=1),
        val_path=write_task_pairs(tmp_path / "val.jsonl", 2000, held_out=True, seed=2),
        tokenizer=tiny_model_dir,
        max_length=32,
        batch_size=32,
        seed=0,
    )
    dm.setup("fit")
    module.configure_model()
    before = policy_wins(module, dm)
    trainer = L.Trainer(max_steps=300, num_sanity_val_steps=0, limit_val_batches=0, **TRAINER)
    trainer.fit(module, dm)
    assert trainer.global_step == 300
    after = policy_wins(module, dm)
    metrics = L.Trainer(**TRAINER).validate(module, dm, verbose=False)[0]
    assert metrics["val/policy_accuracy"] == pytest.approx(after.mean().item(), abs=1e-6)
    gain, se = (after - before).mean(), (after - before).std() / math.sqrt(len(after))
    assert len(after) == 2000 and gain > 3 * se, (before.mean(), after.mean(), se)
    assert metrics["val/accuracy"] > 0.5 and metrics["val/margin"] > 0
