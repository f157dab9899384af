"""What an engine with its own copy of the policy is sent: the effective weights (LoRA merged,
the active adapter only), Hugging Face names, no tied head, in bounded buckets. No vLLM needed."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from lightning_rlhf.models import LoraOptions, ModelOptions, load_causal_lm
from lightning_rlhf.rollout import VLLMRollout
from lightning_rlhf.rollout.weights import buckets, effective_weights


def test_plain_model_sends_its_state_without_the_tied_head(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)  # the embedded model ties its embeddings
    sent = dict(effective_weights(model))
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert sent.keys() == expected.keys()
    assert all(torch.equal(sent[k], expected[k]) for k in expected)


def test_lora_sends_the_merged_weights_of_the_active_adapter_and_leaves_the_module(tiny_model_dir):
    lora = LoraOptions(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    model = load_causal_lm(tiny_model_dir, ModelOptions(lora=lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at 0: make the adapter change something
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sent = dict(effective_weights(model))
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    merged.pop("lm_head.weight")
    assert sent.keys() == merged.keys()
    for k in merged:
        torch.testing.assert_close(sent[k], merged[k], atol=1e-6, rtol=0)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(
        sent[q], before[f"base_model.model.{q}".replace(".weight", ".base_layer.weight")]
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_buckets_hold_at_most_their_size_and_every_tensor_once():
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 5])]  # float32
    out = list(buckets(iter(named), bucket_bytes=80))  # 20 floats a bucket
    assert [list(b) for b in out] == [["t0", "t1"], ["t2"], ["t3", "t4"]]  # t2 alone: too big
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(buckets(iter(named), 0))


def test_the_engine_is_constructible_without_vllm_and_says_how_to_install_it(tiny_model_dir):
    engine = VLLMRollout()  # --help and config parsing build it
    if importlib.util.find_spec("vllm") is None:  # the main venv: the first use says what to do
        model = load_causal_lm(tiny_model_dir)
        with pytest.raises(ImportError, match=r'pip install "lightning_rlhf\[vllm\]"'):
            engine.bind(model, 1, 0).load_weights(model, 1)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMRollout(gpu_memory_utilization=1.5)
