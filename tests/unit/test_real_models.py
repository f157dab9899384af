"""Real architectures: what the stages refuse or fix instead of training or exporting silently
wrong. Each model here is built from its config (a few thousand parameters), nothing downloaded."""

import json

import lightning as L
import pytest
import torch

from lightning_rlhf import PreferenceDataModule, RewardModule, SFTDataModule, SFTModule
from lightning_rlhf.models import load_causal_lm
from lightning_rlhf.packing import causal_lm_forward, check_packing, packing_disagreement

TRAINER = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, max_steps=1,
)  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny_opt_dir(tmp_path_factory):
    """A 2-layer OPT (learned absolute positions, read from the attention mask: position_ids
    are ignored) with the byte tokenizer."""
    from transformers import ByT5Tokenizer, OPTConfig, OPTForCausalLM

    tok = ByT5Tokenizer()
    config = OPTConfig(
        vocab_size=len(tok), hidden_size=16, word_embed_proj_dim=16, ffn_dim=32,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("opt")
    OPTForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


# ------------------------------------------------------------------------------- packing probe
def test_the_packing_probe_tells_opt_from_llama(tiny_opt_dir, tiny_model_dir):
    from lightning_rlhf.models import ModelOptions

    opt = load_causal_lm(tiny_opt_dir, ModelOptions())
    llama = load_causal_lm(tiny_model_dir, ModelOptions())
    cpu = torch.device("cpu")
    assert packing_disagreement(causal_lm_forward(opt), 384, cpu) > 0.05
    assert packing_disagreement(causal_lm_forward(llama), 384, cpu) < 1e-5
    llama.train()  # as in training: the probe runs in eval mode, then puts it back
    check_packing(llama, causal_lm_forward(llama), "data.packing")  # passes
    assert llama.training  # left in the mode it was in
    with pytest.raises(ValueError, match=r"data\.packing: the opt model \(OPTForCausalLM\)"):
        check_packing(opt, causal_lm_forward(opt), "data.packing")


def test_sft_packing_on_opt_is_refused_before_the_first_step(tiny_opt_dir, tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(8)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data = SFTDataModule(
        path, None, tiny_opt_dir, val_fraction=0.0, packing=True, batch_size=2, max_length=32
    )
    module = SFTModule(tiny_opt_dir)
    with pytest.raises(
        ValueError, match=r"data\.packing: the opt model .* Set data\.packing false"
    ):
        L.Trainer(**TRAINER).fit(module, datamodule=data)
    assert module.global_step == 0


def test_padding_free_reward_on_opt_is_refused_and_on_llama_runs(
    tiny_opt_dir, tiny_model_dir, tmp_path
):
    rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i)} for i in range(8)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    for model_dir in (tiny_opt_dir, tiny_model_dir):
        data = PreferenceDataModule(path, None, model_dir, val_fraction=0.0, batch_size=2)
        module = RewardModule(model_dir, padding_free=True)
        trainer = L.Trainer(**TRAINER)
        if model_dir == tiny_opt_dir:
            with pytest.raises(ValueError, match=r"model\.padding_free: the opt model"):
                trainer.fit(module, datamodule=data)
            assert module.global_step == 0
        else:
            trainer.fit(module, datamodule=data)
            assert module.global_step == 1
