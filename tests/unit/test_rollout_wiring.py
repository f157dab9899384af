"""The engine is what every stage samples with: PPO's rollouts go through the one it was given,
bound to its policy and told the weights' version; ``evaluate`` takes one; defaults are not
shared between modules."""

from __future__ import annotations

from functools import partial

import torch

from lightning_rlhf import PPOModule, PromptDataModule, SFTModule
from lightning_rlhf.critics import ValueHead
from lightning_rlhf.evaluate import answer_prompts
from lightning_rlhf.optim import ScheduleOptions
from lightning_rlhf.rollout import HFRollout, PagedRollout, SamplingOptions


class Recording(HFRollout):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def refresh(self, model) -> None:
        self.calls.append(("refresh", self.weight_version))

    def generate(self, prompt_ids, prompt_mask, options):
        self.calls.append(("generate", prompt_ids.shape[0], self.eos_token_id, self.pad_token_id))
        return super().generate(prompt_ids, prompt_mask, options)


def length_score(prompts, responses):
    return torch.tensor([float(len(r)) for r in responses])


def test_ppo_samples_with_its_engine_bound_to_the_policy(tiny_model_dir, task_dir, tokenizer):
    engine = Recording()
    module = PPOModule(
        tiny_model_dir, reward=length_score, critic=ValueHead(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3), schedule=ScheduleOptions(warmup_steps=0),
        sampling=SamplingOptions(max_new_tokens=5), log_samples_every_n_iterations=0, rollout=engine,
    )  # fmt: skip
    module.configure_model()
    data = PromptDataModule(
        train_path=str(task_dir / "prompts_train.jsonl"), val_path=None, val_fraction=0.0,
        tokenizer=tiny_model_dir, batch_size=4, max_prompt_length=32,
    )  # fmt: skip
    data.setup("fit")
    rollout, info = module.make_rollout(next(iter(data.train_dataloader())))
    assert module.rollout is engine and engine.model is module.model
    rows = rollout.response_ids.shape[0]
    assert engine.calls == [
        ("refresh", None),  # the first rollout loads version 0, the optimizer step count
        ("generate", rows, tokenizer.eos_token_id, tokenizer.pad_token_id),
    ]
    assert engine.weight_version == 0
    metrics = info.engine
    assert metrics["rollout/tokens"] == rollout.response_mask.sum()
    assert metrics["rollout/response_length_max"] <= 5


def test_default_engines_are_not_shared(tiny_model_dir):
    a, b = SFTModule(tiny_model_dir), SFTModule(tiny_model_dir)
    assert isinstance(a.rollout, HFRollout) and a.rollout is not b.rollout


def test_evaluate_answers_alike_with_either_engine(tiny_model_dir, one_thread):
    prompts = ["12+34=", "rev abc=", "hello"]
    default = answer_prompts(tiny_model_dir, prompts, progress=False)
    paged = answer_prompts(tiny_model_dir, prompts, progress=False, rollout=PagedRollout())
    assert paged == default and len(default) == 3
