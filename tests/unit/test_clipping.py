"""Gradient clipping and the non-finite gradient check: one pass over the gradients, the same
result as torch's clip_grad_norm_, and fused optimisers allowed under bf16-mixed."""

import functools

import lightning as L
import pytest
import torch
from host_reads import HostReads

from lightning_rlhf import SFTDataModule
from lightning_rlhf.modules.sft import SFTModule

pytestmark = pytest.mark.usefixtures("one_thread")


class _Attached(SFTModule):
    """An SFTModule with a stand-in trainer: enough for the clipping methods."""

    @property
    def trainer(self):
        strategy = L.pytorch.strategies.SingleDeviceStrategy("cpu")
        return type("T", (), {"strategy": strategy, "precision_plugin": None})()


def module_with_grads(tiny_model_dir, scale: float):
    module = _Attached(tiny_model_dir)
    module.configure_model()
    torch.manual_seed(0)
    for p in module.model.parameters():
        p.grad = torch.randn_like(p) * scale
    return module, torch.optim.SGD(module.model.parameters(), lr=0.1)


def test_clipping_matches_torch_and_returns_the_norm_before_clipping(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    grads = [p.grad.clone() for p in module.model.parameters()]
    expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    reference = [g.clone().requires_grad_() for g in grads]
    for r, g in zip(reference, grads):
        r.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(reference, 0.5)

    norm = module.clip_and_check_gradients(opt, 0.5)
    assert norm == pytest.approx(float(expected_norm), rel=1e-5) and norm > 0.5
    clipped = [p.grad for p in module.model.parameters()]
    for ours, theirs in zip(clipped, reference):
        torch.testing.assert_close(ours, theirs.grad)
    after = torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped]))
    assert after == pytest.approx(0.5, rel=1e-4)


def test_no_clipping_below_the_limit_or_without_one(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1e-4)
    before = [p.grad.clone() for p in module.model.parameters()]
    module.clip_and_check_gradients(opt, 1.0)
    module.clip_and_check_gradients(opt, None)
    for p, b in zip(module.model.parameters(), before):
        assert torch.equal(p.grad, b)


def test_a_nonfinite_gradient_raises_naming_the_step(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    next(module.model.parameters()).grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite gradient at step 0"):
        module.clip_and_check_gradients(opt, 1.0)


def test_fused_adamw_with_clipping_under_bf16_mixed(tiny_model_dir, task_dir):
    """Lightning's AMP plugin refuses a fused optimiser with gradient clipping under bf16-mixed
    (its check is for fp16's scaled gradients); the stages clip themselves, so it trains."""
    fused = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
    module = SFTModule(tiny_model_dir, optimizer=fused)
    data = SFTDataModule(
        str(task_dir / "sft_train.jsonl"), None, tiny_model_dir, val_fraction=0.0, batch_size=8
    )
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        gradient_clip_val=1e-3,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module.configure_model()
    start = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(start, module.parameters()))


def test_trainer_clipping_by_value_clamps_each_element(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    module.configure_gradient_clipping(opt, gradient_clip_val=0.01, gradient_clip_algorithm="value")
    grads = torch.cat([p.grad.flatten() for p in module.model.parameters()])
    assert grads.abs().max() == pytest.approx(0.01)
    next(module.model.parameters()).grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        module.configure_gradient_clipping(opt, 0.01, "value")


def test_the_step_s_losses_are_read_with_the_gradient_norm_in_one_host_read(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    for loss in (torch.tensor(2.0), torch.tensor(1.5)):  # two accumulated batches
        assert module.check_loss(loss)
        with HostReads() as reads:
            module.on_before_backward(loss)  # not read here: with the gradients, below
        assert reads.count == 0
    with HostReads() as reads:
        module.clip_and_check_gradients(opt, 1.0)
    assert reads.count == 1 and module._pending_losses == []


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_nonfinite_loss_is_named_and_raises_or_drops_the_step_s_gradients(tiny_model_dir, policy):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    module.nan_policy = policy
    module.check_loss(torch.tensor(1.0))
    module.check_loss(torch.tensor(float("nan")))  # the second of two accumulated batches
    message = r"non-finite loss \(in 1 of the 2 batches of this optimizer step\) at step 0"
    if policy == "raise":
        with pytest.raises(FloatingPointError, match=message):
            module.clip_and_check_gradients(opt, 1.0)
        return
    with pytest.warns(UserWarning, match=message + "; step skipped"):
        module.clip_and_check_gradients(opt, 1.0)
    assert all(p.grad is None for p in module.model.parameters())  # the step changes nothing
    # the next step's finite loss and gradients pass
    for p in module.model.parameters():
        p.grad = torch.ones_like(p)
    module.check_loss(torch.tensor(1.0))
    module.clip_and_check_gradients(opt, 1.0)


def test_an_inf_gradient_of_finite_losses_raises_under_either_policy(tiny_model_dir):
    module, opt = module_with_grads(tiny_model_dir, scale=1.0)
    module.nan_policy = "skip"
    module.check_loss(torch.tensor(1.0))
    next(module.model.parameters()).grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite gradient at step 0"):
        module.clip_and_check_gradients(opt, 1.0)
