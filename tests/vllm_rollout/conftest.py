"""VLLMRollout's tests: run in a venv with vLLM (.ci/vllm-venv.sh builds it), skipped elsewhere
(each module skips itself: a skip in a conftest would stop the whole session).

One engine per test model for the whole session (an engine takes seconds to start and ~1.7 GiB):
each test first loads its own weights under a new version, so the order of the tests does not
matter. The model is a 2-layer Llama of hidden 128 with 4 heads: vLLM's CPU attention needs a
head size of at least 32.
"""

from __future__ import annotations

import itertools
import os

import pytest

NEEDS_VLLM = 'needs vLLM: pip install "lightning_rlhf[vllm]" (or .ci/vllm-venv.sh)'

# in-process engine (seconds to start, not tens), a 1 GiB KV cache on CPU
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

_versions = itertools.count(1)


def next_version() -> int:
    """A weight version no engine has seen in this session."""
    return next(_versions)


def write_llama(out_dir, tied: bool, seed: int = 0):
    """A random 2-layer Llama (hidden 128, 4 heads of 32) with the byte tokenizer."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = ByT5Tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def llama_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_models")
    return {tied: write_llama(root / f"tied{int(tied)}", tied) for tied in (False, True)}


@pytest.fixture(scope="session")
def engines():
    """One VLLMRollout per tying (False, True), started at its first use."""
    from lightning_rlhf.rollout import VLLMRollout

    made = {tied: VLLMRollout(dtype="float32", enforce_eager=True) for tied in (False, True)}
    yield made
    for engine in made.values():
        engine.llm = None  # frees the engine before the interpreter exits


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models on shared cores: one intra-op thread (vLLM's CPU workers bind their own)."""
    torch.set_num_threads(1)
