import pickle

import pytest
import torch

from lightning_rlhf.models import (
    LoraOptions,
    ModelOptions,
    export_hf,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
)


def test_missing_path_names_it_and_the_fix(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"nope' is neither a local directory.*init-model"):
        load_causal_lm(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)


def test_tokenizer_without_pad_gets_eos_as_pad(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    reloaded = load_tokenizer(str(tmp_path / "tok"))
    assert reloaded.pad_token_id == reloaded.eos_token_id


def test_export_loads_with_auto_classes(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_causal_lm(tiny_model_dir)
    out = export_hf(model, tokenizer, tmp_path / "export")
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    again = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".export.tmp-*"))  # nothing half-written left behind


def test_failed_export_keeps_the_previous_one(tiny_model_dir, tokenizer, tmp_path):
    model = load_causal_lm(tiny_model_dir)
    out = export_hf(model, tokenizer, tmp_path / "export")
    before = (out / "model.safetensors").read_bytes()

    class Broken:
        def save_pretrained(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_hf(Broken(), tokenizer, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_lora_export_merged_equals_adapted_model(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_causal_lm(tiny_model_dir, ModelOptions(lora=LoraOptions(r=4, alpha=8)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) // 5
    with torch.no_grad():  # make the adapters non-zero so merging matters
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.tensor([[10, 20, 30, 40]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    export_hf(model, tokenizer, tmp_path / "merged", merge_lora=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
    export_hf(model, tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_scalar_model_has_one_output_and_pad_id(tiny_model_dir):
    model = load_scalar_model(tiny_model_dir, pad_token_id=0)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="pickled weights"):
        load_causal_lm(str(d))


def test_trust_remote_code_is_off_by_default():
    assert ModelOptions().trust_remote_code is False


def test_nonfinite_weight_check_reads_once_and_is_exact():
    from lightning_rlhf.models import _nonfinite

    w = torch.randn(64, 32)
    assert not _nonfinite(w) and not _nonfinite(w.bfloat16())
    for bad in (float("nan"), float("inf"), float("-inf")):
        v = w.clone()
        v[3, 5] = bad
        assert _nonfinite(v) and _nonfinite(v.bfloat16())
    # finite values whose float32 sum overflows are still finite weights
    assert not _nonfinite(torch.full((4,), 3e38))
    assert not _nonfinite(torch.tensor([3e38, 3e38, -3e38]))
