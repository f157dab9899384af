"""DPO's sequence log-probs: the LM head on every position vs on the response positions only.

    python benchmarks/dpo_logps.py                     # llama-25m shape, 8 pairs, prompt 64 + response 64
    python benchmarks/dpo_logps.py --prompt 16 --response 112

Forward + backward of the policy's summed response log-probs, as one DPO step does them for a
batch of pairs: ``full`` runs the LM head over the whole sequence (then gathers the response
tokens), ``ours`` is ``DPOModule._logps`` (the head sees only the positions that predict a
response token). Same model (the benchmark suite's 26M Llama shape, vocabulary 32,000, random
weights: the cost does not depend on them), same tokens, alternating; prints medians and the
largest difference between the two results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_rlhf.losses import sequence_logprobs
from lightning_rlhf.modules.dpo import DPOModule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--response", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32_000, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=6, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).train()
    rows, length = 2 * a.pairs, a.prompt + a.response  # chosen and rejected rows
    ids = torch.randint(0, config.vocab_size, (rows, length))
    mask = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, a.prompt :] = 1

    def full() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (rows, T, V)
        return sequence_logprobs(logits, ids, response)

    def ours() -> torch.Tensor:
        return DPOModule._logps(model, ids, mask, response)

    diff = (full() - ours()).abs().max().item()
    times: dict[str, list[float]] = {"full": [], "ours": []}
    for _ in range(a.repeats):
        for name, f in (("full", full), ("ours", ours)):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            f().sum().backward()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{rows} rows of {a.prompt} + {a.response} tokens, {a.threads} thread(s), {a.repeats} "
        f"repeats; largest |full - ours| {diff:.2e} (sums of {a.response} log-probs)"
    )
    for k, v in times.items():
        print(f"{k:>4}: median {med[k]:.3f} s (min {min(v):.3f}, max {max(v):.3f})")
    print(f"ours is {med['full'] / med['ours']:.2f}x the full head's speed")


if __name__ == "__main__":
    main()
