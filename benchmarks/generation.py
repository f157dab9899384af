"""Sampling speed: transformers' ``generate`` against ``lightning_rlhf.rollout.generate``, and one
token draw by ``torch.multinomial`` against ``rollout.sample_tokens``, in one process.

    .venv/bin/python benchmarks/generation.py            # ~1 min; --model llama-5m, --threads N
    .venv/bin/python benchmarks/generation.py --host     # the host's work per token (~1 min)
    .venv/bin/python benchmarks/generation.py --engines --threads 2   # the rollout engines
    .venv/bin/python benchmarks/generation.py --engines --threads 2 --vllm-python .venv-vllm/bin/python

``--engines`` times the rollout engines against the loop before them and transformers'
``generate`` (see ``engines``); it writes benchmarks/results/generation-engines-<date>.json.

The benchmark's PPO setting: 16 prompts of 32 tokens, 32 new tokens at temperature 1 (EOS
banned, so every row runs to the end), fp32, the case's model (built if missing). The two
generators alternate; medians (min–max) of ``--rounds`` calls each.

``--host`` measures what a launch-bound GPU sees instead: a model with the GPU suite's 28 layers
but almost no arithmetic (hidden 64, vocabulary 512), 64 left-padded prompts (the GPU suite's
PPO batch), so the time is the host's (Python, dispatch); it also counts the operations each
generator issues (each one a kernel launch on a GPU) and its reads of device values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_rlhf.models import load_causal_lm, load_tokenizer
from lightning_rlhf.rollout import SamplingOptions, generate, sample_tokens

HERE = Path(__file__).resolve().parent


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(xs: list[float], unit: float = 1.0) -> str:
    return f"{statistics.median(xs) * unit:.3f} ({min(xs) * unit:.3f}–{max(xs) * unit:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-25m", choices=sorted(assets.MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host", action="store_true", help="a 28-layer model of no arithmetic")
    parser.add_argument("--engines", action="store_true", help="the rollout engines (58M Llama)")
    parser.add_argument("--rows", type=int, default=64, help="--engines: prompts per call")
    parser.add_argument("--new", type=int, nargs="+", default=[64, 256], help="--engines: N")
    parser.add_argument("--ragged", action="store_true", help="--engines: long-tailed lengths")
    parser.add_argument("--sides", nargs="+", help='--engines: these sides only ("HFRollout" ...)')
    parser.add_argument(
        "--vllm-python", help="--engines: vLLM's venv's python, for a vLLM side (.ci/vllm-venv.sh)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.host:
        return host_work(args.rounds)
    if args.engines:
        from engines_bench import engines

        return engines(
            args.rows, args.new, args.rounds, args.threads, args.ragged, args.vllm_python,
            args.sides,
        )  # fmt: skip
    root = assets.build(HERE / ".cache", args.model, assets.DataSpec())
    tok = load_tokenizer(str(root / "lm"), padding_side="left")
    model = load_causal_lm(str(root / "lm")).eval()
    lines = (root / "data" / "prompts.jsonl").read_text().splitlines()[:16]
    prompts = [json.loads(line)["prompt"] for line in lines]
    enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    new = 32

    def theirs():
        model.generate(
            **enc, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0,
            top_k=None, top_p=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip

    def ours():
        sampling = SamplingOptions(new, temperature=1.0, min_new_tokens=new)
        generate(model, enc.input_ids, enc.attention_mask, sampling, tok.eos_token_id,
                 tok.pad_token_id)  # fmt: skip

    with torch.no_grad():
        theirs(), ours()  # warm-up
        t_theirs, t_ours = [], []
        for _ in range(args.rounds):
            t_theirs += timed(theirs, 1)
            t_ours += timed(ours, 1)
        logits = torch.randn(16, model.config.vocab_size)
        draw_multinomial = timed(lambda: torch.multinomial(logits.softmax(-1), 1), 50)
        draw_ours = timed(lambda: sample_tokens(logits, SamplingOptions()), 50)
    print(f"{args.model}, {len(prompts)} prompts × {enc.input_ids.shape[1]} tokens, {new} new, "
          f"{args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    print(f"transformers generate      {summary(t_theirs)} s")
    print(f"rollout.generate           {summary(t_ours)} s")
    print(
        f"ratio (theirs / ours)      {statistics.median(t_theirs) / statistics.median(t_ours):.2f}"
    )
    print(f"one draw, multinomial      {summary(draw_multinomial, 1e3)} ms")
    print(f"one draw, sample_tokens    {summary(draw_ours, 1e3)} ms")


class Ops(TorchDispatchMode):
    """Counts the operations issued and the reads of device values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.reads = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.reads += func.__name__.startswith(("_local_scalar_dense", "nonzero"))
        return func(*args, **(kwargs or {}))


def host_work(rounds: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=28,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    rows, width, new = 64, 32, 32
    ids = torch.randint(3, 512, (rows, width))
    mask = torch.ones_like(ids)
    for i in range(rows):  # left padding of 0..7 tokens
        ids[i, : i % 8], mask[i, : i % 8] = 0, 0

    def theirs():
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
            do_sample=True, temperature=1.0, top_k=None, top_p=None, eos_token_id=2,
            pad_token_id=0,
        )  # fmt: skip

    def ours():
        generate(model, ids, mask, SamplingOptions(new, temperature=1.0, min_new_tokens=new), 2, 0)

    with torch.no_grad():
        theirs(), ours()  # warm-up
        t_theirs, t_ours = [], []
        for _ in range(rounds):
            t_theirs += timed(theirs, 1)
            t_ours += timed(ours, 1)
        counts = {}
        for name, fn in (("transformers generate", theirs), ("rollout.generate", ours)):
            with Ops() as counts[name]:
                fn()
    print(f"host work: 28 layers × hidden 64, {rows} prompts × {width} tokens, {new} new, "
          f"torch {torch.__version__}")  # fmt: skip
    for name, t in (("transformers generate", t_theirs), ("rollout.generate", t_ours)):
        c = counts[name]
        print(f"{name:26s} {summary(t)} s, {c.ops / new:.0f} operations and "
              f"{c.reads / new:.1f} reads of device values per new token")  # fmt: skip


if __name__ == "__main__":
    main()
