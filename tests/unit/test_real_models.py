"""Real architectures: what the stages refuse or fix instead of training or exporting silently
wrong. Each model here is built from its config (a few thousand parameters), nothing downloaded."""

import json

import lightning as L
import pytest
import torch

from lightning_rlhf import PreferenceDataModule, RewardModule, SFTDataModule, SFTModule
from lightning_rlhf.models import check_same_tokenizer, load_causal_lm, load_scalar_model
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


# ------------------------------------------------------------------------------- exports
@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 whose tokenizer pads with its EOS (as GPT-2's does, once given a pad)."""
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    tok = ByT5Tokenizer()
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id == 1 and len(tok) == 384
    config = GPT2Config(
        vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _batch(tokenizer, texts, side):
    from lightning_rlhf.data.collate import pad
    from lightning_rlhf.data.text import encode_completion, encode_prompt

    seqs = [encode_prompt(tokenizer, p) + encode_completion(tokenizer, r) for p, r in texts]
    ids = pad(seqs, tokenizer.pad_token_id, side=side)
    mask = pad([[1] * len(s) for s in seqs], 0, side=side)
    return ids, mask


def test_an_exported_pad_eq_eos_reward_model_scores_the_same_in_plain_transformers(
    tiny_gpt2_dir, tmp_path
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lightning_rlhf.models import load_tokenizer, sequence_scores

    module = RewardModule(tiny_gpt2_dir)
    module.configure_model()
    with torch.no_grad():  # a head that is not ~0: the scores must tell tokens apart
        module.model.score.weight.normal_(0, 1.0)
    module.model.eval()
    out = module.export(tmp_path / "rm")
    assert module.tokenizer.pad_token_id == module.tokenizer.eos_token_id  # the module's is kept
    texts = [("12+3=", "15"), ("rev abc=", "cba"), ("hi", "a longer answer")]
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    plain_tok = AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(tiny_gpt2_dir)
    with torch.no_grad():
        for side in ("right", "left"):
            ids, mask = _batch(ours, texts, side)
            expected = sequence_scores(module.model, ids, mask)  # (3,), read at each EOS
            ids, mask = _batch(plain_tok, texts, side)
            # GPT-2's positions are learned: left padding needs them given, as for any tool
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            got = plain(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 0]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # a pad token of its own, named in the config, is what makes it so
    assert plain_tok.pad_token_id != plain_tok.eos_token_id == module.tokenizer.eos_token_id
    assert plain.config.pad_token_id == plain_tok.pad_token_id
    # the round trip through the stages' own loader reads the same scores
    reloaded = load_scalar_model(str(out), pad_token_id=plain_tok.pad_token_id).eval()
    ids, mask = _batch(load_tokenizer(str(out)), texts, "left")
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_scores(reloaded, ids, mask), expected, atol=1e-5, rtol=0
        )
    # a critic started from this export still reads the policy's ids: its own pad is allowed
    check_same_tokenizer(tiny_gpt2_dir, str(out), "critic")


def test_exported_tokenizers_carry_the_fallback_chat_template(tiny_model_dir, tmp_path):
    from lightning_rlhf.data.text import PLAIN_CHAT_TEMPLATE, render_chat
    from lightning_rlhf.models import load_tokenizer

    module = SFTModule(tiny_model_dir)
    assert not module.tokenizer.chat_template  # the byte tokenizer ships none
    module.configure_model()
    out = module.export(tmp_path / "sft")
    exported = load_tokenizer(str(out))
    assert exported.chat_template == PLAIN_CHAT_TEMPLATE
    assert not module.tokenizer.chat_template  # the module's own tokenizer is left as it was
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    prompt = exported.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_chat(module.tokenizer, msgs[:1], add_generation_prompt=True)
    assert prompt == "user: hi\nassistant: "


# ------------------------------------------------------------------------------- oracle
def test_the_shipped_oracle_on_user_data_names_the_option_before_training(tiny_model_dir, tmp_path):
    from lightning_rlhf import TaskOracle

    rows = [{"prompt": f"Human: hi {i}\n\nAssistant:", "completion": " hello"} for i in range(8)]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    data = SFTDataModule(path, None, tiny_model_dir, val_fraction=0.25, batch_size=2)
    module = SFTModule(tiny_model_dir, oracle=TaskOracle(), num_logged_samples=0)
    trainer = L.Trainer(**{**TRAINER, "num_sanity_val_steps": 2, "limit_val_batches": None})
    with pytest.raises(ValueError, match=r"'Human: hi \d.*--model\.oracle null"):
        trainer.fit(module, datamodule=data)
    assert module.global_step == 0  # the sanity check's generation caught it
