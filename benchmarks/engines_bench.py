"""Rollout engines on the CPU (``benchmarks/generation.py --engines``): tokens/s of each side on
one process, the sides alternating within each round (the first side rotates), medians over
rounds.

The case of issue 18: a 58M-parameter Llama with a 32k vocabulary (hidden 512, 8 layers, untied
head; random weights), ``rows`` prompts of 32 tokens left-padded by 0–7, fp32, temperature 1.
By default EOS is banned, so every row generates exactly N tokens on every side; ``--ragged``
gives EOS 2/N of the mass at each step instead (lengths geometric, cut at N: long-tailed), and
each side's tokens/s counts the tokens it generated.

Sides: "loop before" is
``HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False)``, the loop this
package had before the engines (every row to the end, transformers' concatenating cache);
"HFRollout" its default; "HFRollout static" transformers' StaticCache; "PagedRollout"
(its first call, with the library's warm-up, timed apart); "transformers generate" with
``do_sample``, no top-k/top-p and the same EOS rule; with ``--vllm-python PY``, "vLLM":
``VLLMRollout`` on the same model and prompts in a process of that interpreter (vLLM's own venv,
``.ci/vllm-venv.sh``), after the other sides, its engine start timed apart (the default engine,
compiled: ``enforce_eager`` false). vLLM is not given the ragged case (its EOS rule is a hook on
the Hugging Face model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from lightning_rlhf.rollout import HFRollout, PagedRollout, SamplingOptions

RESULTS = Path(__file__).resolve().parent / "results"
EOS, PAD = 2, 0


def model_58m():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
    )  # fmt: skip
    # 2 x 32000 x 512 embeddings and head + 8 x (4 x 512² + 3 x 512 x 1376) = 58.1M parameters
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def eos_share_hook(model, share: float):
    def hook(module, inputs, logits):
        others = logits.index_fill(-1, torch.tensor([EOS]), -math.inf)
        logits = logits.clone()
        logits[..., EOS] = others.logsumexp(-1) + math.log(share / (1 - share))
        return logits

    return model.get_output_embeddings().register_forward_hook(hook)


def sides(model, ids, mask, new: int, ragged: bool):
    """{name: fn() -> tokens generated}."""
    options = SamplingOptions(new, temperature=1.0, min_new_tokens=0 if ragged else new)

    def engine(e):
        e.bind(model, EOS, PAD)
        return lambda: int(e.generate(ids, mask, options).response_mask.sum())

    def theirs():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new,
            min_new_tokens=0 if ragged else new, do_sample=True, temperature=1.0, top_k=None,
            top_p=None, eos_token_id=EOS, pad_token_id=PAD,
        )[:, ids.shape[1]:]  # fmt: skip
        ended = (out == EOS).cumsum(1) - (out == EOS).long()  # tokens after the first EOS
        return int((ended == 0).sum())

    return {
        "loop before": engine(
            HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False)
        ),
        "HFRollout": engine(HFRollout()),
        "HFRollout static": engine(HFRollout(cache="static")),
        "PagedRollout": engine(PagedRollout()),
        "transformers generate": theirs,
    }


def prompts(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` random prompts of 32 tokens, row i left-padded by i mod 8: (rows, 32) each."""
    torch.manual_seed(1)
    ids = torch.randint(3, 32000, (rows, 32))
    mask = torch.ones_like(ids)
    for i in range(rows):
        ids[i, : i % 8], mask[i, : i % 8] = PAD, 0
    return ids, mask


def timed_rounds(fns: dict, new: int, rounds: int) -> dict[str, list[float]]:
    """Tokens/s of each side per round, the sides alternating (the first rotates each round)."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        names = list(fns)[r % len(fns) :] + list(fns)[: r % len(fns)]
        for name in names:
            t = time.perf_counter()
            tokens = fns[name]()
            rates[name].append(tokens / (time.perf_counter() - t))
            print(f"N={new} round {r} {name:22s} {rates[name][-1]:7.0f} tokens/s", flush=True)
    return rates


def vllm_side(rows: int, news: list[int], rounds: int) -> dict:
    """In vLLM's venv: VLLMRollout on the benchmark's model and prompts, every row to N."""
    from lightning_rlhf.rollout import VLLMRollout

    model, (ids, mask) = model_58m(), prompts(rows)
    engine = VLLMRollout(max_model_len=32 + max(news), dtype="float32")
    engine.bind(model, EOS, PAD)
    t = time.perf_counter()
    engine.load_weights(model, 1)  # the engine's start: weights read, graphs compiled
    out = {"start_s": time.perf_counter() - t, "results": {}}
    with torch.no_grad():
        for new in news:
            options = SamplingOptions(new, temperature=1.0, min_new_tokens=new)

            def fn(options=options) -> int:
                return int(engine.generate(ids, mask, options).response_mask.sum())

            t = time.perf_counter()
            fn()  # the first call of each N: the engine's warm-up for that length
            out["results"][str(new)] = {
                "first_call_s": time.perf_counter() - t,
                "all": timed_rounds({"vLLM": fn}, new, rounds)["vLLM"],
            }
    return out


def run_vllm(python: str, rows: int, news: list[int], rounds: int, threads: int) -> dict:
    """:func:`vllm_side` in a process of ``python`` (vLLM's venv), this checkout on its path."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'benchmarks'}",
           "OMP_NUM_THREADS": str(threads), "VLLM_CPU_KVCACHE_SPACE": "4"}  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        args = ["--vllm-side", f.name, "--rows", str(rows), "--rounds", str(rounds), "--new"]
        cmd = [python, __file__, *args, *map(str, news)]
        subprocess.run(cmd, check=True, env=env)
        return json.loads(Path(f.name).read_text())


def engines(
    rows: int,
    news: list[int],
    rounds: int,
    threads: int,
    ragged: bool,
    vllm_python: str | None,
    only: list[str] | None = None,
) -> None:
    model = model_58m()
    ids, mask = prompts(rows)
    hook = eos_share_hook(model, 2 / max(news)) if ragged else None
    report = {"case": f"58M Llama, {rows} prompts x 32, fp32, {threads} thread(s)", "ragged": ragged,
              "sides": only or "all",
              "torch": torch.__version__, "cpu": platform.processor(), "date": str(date.today()),
              "rounds": rounds, "load_average": os.getloadavg(), "results": {}}  # fmt: skip
    with torch.no_grad():
        for new in news:
            fns = sides(model, ids, mask, new, ragged)
            fns = {k: v for k, v in fns.items() if not only or k in only}
            first_paged = None
            if "PagedRollout" in fns:
                t = time.perf_counter()
                fns["PagedRollout"]()  # its first call: the manager's set-up and warm-up included
                first_paged = time.perf_counter() - t
            rates = timed_rounds(fns, new, rounds)
            report["results"][str(new)] = {
                "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
                "all": rates, "paged_first_call_s": first_paged,
            }  # fmt: skip
    if hook is not None:
        hook.remove()
    if vllm_python and not ragged:
        del model  # its memory, for the engine's
        theirs = run_vllm(vllm_python, rows, news, rounds, threads)
        report["vllm_start_s"] = theirs["start_s"]
        for new, res in theirs["results"].items():
            report["results"][new]["tokens_per_s"]["vLLM"] = statistics.median(res["all"])
            report["results"][new]["all"]["vLLM"] = res["all"]
            report["results"][new]["vllm_first_call_s"] = res["first_call_s"]
    print_table(report)
    name = f"generation-engines-{report['date']}-{threads}t{'-ragged' if ragged else ''}"
    name += "-some.json" if only else ".json"
    (RESULTS / name).write_text(json.dumps(report, indent=1))
    print(f"wrote benchmarks/results/{name}")


def print_table(report) -> None:
    print(f"\n{report['case']}{', ragged' if report['ragged'] else ''}: tokens/s, medians of "
          f"{report['rounds']} rounds (÷ the loop before)")  # fmt: skip
    for new, res in report["results"].items():
        base = res["tokens_per_s"].get("loop before", math.nan)
        cells = ", ".join(f"{k} {v:.0f} ({v / base:.2f})" for k, v in res["tokens_per_s"].items())
        first = res["paged_first_call_s"]
        print(f"N={new}: {cells}" + (f"; PagedRollout's first call {first:.1f} s" if first else ""))
    if "vllm_start_s" in report:
        print(f"vLLM's engine start {report['vllm_start_s']:.1f} s (not in its tokens/s)")


def main() -> None:
    """The vLLM side's entry point (``run_vllm`` calls it in vLLM's venv)."""
    p = argparse.ArgumentParser(description="vLLM's side of the engines benchmark")
    p.add_argument("--vllm-side", required=True, help="where to write its JSON")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--new", type=int, nargs="+", default=[64, 256])
    a = p.parse_args()
    out = vllm_side(a.rows, a.new, a.rounds)
    Path(a.vllm_side).write_text(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
