"""Sampling speed: transformers' ``generate`` against ``lightning_rlhf.rollout.generate``, and one
token draw by ``torch.multinomial`` against ``rollout.sample_tokens``, in one process.

    .venv/bin/python benchmarks/generation.py            # ~1 min; --model llama-5m, --threads N

The benchmark's PPO setting: 16 prompts of 32 tokens, 32 new tokens at temperature 1 (EOS
banned, so every row runs to the end), fp32, the case's model (built if missing). The two
generators alternate; medians (min–max) of ``--rounds`` calls each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import torch

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()
