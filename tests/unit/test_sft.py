"""SFT's response-only LM head (completion_logits) and the stages' single read of a checked loss."""

import pytest
import torch
import torch.nn.functional as F
from host_reads import HostReads
from transformers import AutoModelForCausalLM

from lightning_rlhf.data.collate import collate_lm
from lightning_rlhf.modules.sft import SFTModule, completion_logits
from lightning_rlhf.types import LMBatch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def batch() -> LMBatch:
    """Three right-padded rows: prompts (-100), learned completions, pad (-100) of other lengths."""
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    labels = ids.clone()
    labels[0, :4] = -100  # prompt of 4, completion to the end
    labels[1, :2] = -100  # prompt of 2, completion of 5, pad of 3
    labels[1, 7:] = -100
    mask[1, 7:] = 0
    labels[2, :6] = -100  # prompt of 6, completion of 2, pad of 2
    labels[2, 8:] = -100
    mask[2, 8:] = 0
    return LMBatch(ids, mask, labels)


def test_head_on_learned_positions_equals_the_full_forward_and_its_gradient(tiny_model_dir, batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B,T,V)
    targets = batch.labels[:, 1:]
    keep = targets != -100  # (B, T-1): position t predicts token t + 1
    expected_logits, expected_targets = full[:, :-1][keep], targets[keep]
    expected_loss = F.cross_entropy(expected_logits, expected_targets)
    expected_grads = torch.autograd.grad(expected_loss, list(model.parameters()))

    logits, got_targets, index = completion_logits(model, batch)
    # every completion token is learned, the first one predicted from the prompt's last position
    n = 6 + 5 + 2
    assert logits.shape == (1, n, full.shape[-1]) and got_targets.shape == (1, n)
    torch.testing.assert_close(logits[0], expected_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_targets[0], expected_targets)
    T = batch.input_ids.shape[1]
    rows, cols = keep.nonzero().unbind(1)
    assert torch.equal(index, rows * T + cols)  # flat positions, row-major
    loss = F.cross_entropy(logits[0], got_targets[0])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_collator_finds_the_learned_positions_and_the_step_reads_them_from_no_device(
    tiny_model_dir,
):
    """The collator finds the learned positions on the host: the loss reads one device value
    fewer, and equals the loss of the batch whose
    positions are found in the step."""
    examples = [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, 7, 8, 9, 10]},
        {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]},
    ]
    batch = collate_lm(examples, 0)
    # positions 1..4 of row 0 and 1 of row 1 (6 columns) predict a learned token
    assert batch.loss_index.tolist() == [1, 2, 3, 4, 7]
    module = SFTModule(tiny_model_dir)
    module.configure_model()
    with HostReads() as reads:
        loss, stats = module._loss(batch)
    with HostReads() as found_in_step:
        expected, _ = module._loss(batch._replace(loss_index=None))
    # transformers' looks at the padding mask stay (2 here: it has a padded row)
    assert found_in_step.count == reads.count + 1 and int(stats["tokens"]) == 5
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_a_checked_loss_is_not_read_again_before_backward_and_an_unchecked_one_is(
    tiny_model_dir,
):
    module = SFTModule(tiny_model_dir)
    nan = torch.tensor(float("nan"))
    # the stage checked this step's loss: Lightning's copy of it (loss / accumulation) is finite
    # alike, so the hook does not read it (here a stand-in NaN shows that it was not read)
    assert module.check_finite("loss", torch.tensor(1.5))
    module.on_before_backward(nan)
    # the flag is spent: the next loss handed over without a check is read, and raises
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        module.on_before_backward(nan)
    # another quantity's check does not count as the loss's
    assert module.check_finite("rewards", torch.ones(3))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        module.on_before_backward(nan)


def test_step_statistics_are_logged_on_the_steps_a_logger_writes(
    tiny_model_dir, task_dir, tmp_path
):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lightning_rlhf import SFTDataModule

    module = SFTModule(tiny_model_dir)
    logged_at, log_dict = [], module.log_dict
    module.log_dict = lambda d, **kw: (logged_at.append(module.global_step), log_dict(d, **kw))
    data = SFTDataModule(
        str(task_dir / "sft_train.jsonl"), None, tiny_model_dir, val_fraction=0.0, batch_size=4
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=6, log_every_n_steps=3, logger=CSVLogger(tmp_path),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert logged_at == [2, 5]  # the steps whose metrics the logger writes, and no others
    with open(trainer.logger.experiment.metrics_file_path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/token_accuracy")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert all(r["train/loss"] and float(r["train/tokens"]) > 0 for r in rows)
