"""Rollout engines on one GPU: long, long-tailed responses, every side generating the same tokens.

    python benchmarks/engines_gpu.py --out results/     # ~5 min on one H200

The case of issue 18: the GPU suite's 503M Llama (28 × 1024, 16 heads, MLP 4096, 32k vocabulary,
tied head; random weights) in bf16, 512 rows (128 prompts × 4) of 32 tokens left-padded by 0–7,
up to 512 new tokens, temperature 1. Every side must generate exactly the same responses, so that
tokens/s compare equal work: a forward hook on the model replaces its logits (after the LM head
ran, and depending on them, so no compiler drops the head) with ones that put all the mass on one
token, a countdown: token 3 + k is followed by 3 + k - 1, token 3 by EOS. Each row's last prompt
token sets its length, drawn long-tailed (log-normal, median 96 tokens; 7 % of rows are cut at 512).
The countdown only picks which token is drawn; every side still runs the whole forward, the
softmax over the vocabulary and its own sampler. Each side's responses are checked against the
countdown (``mismatched_rows``), and its tokens/s counts the tokens it generated.

Sides: "loop before"
(``HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False)``: the package's
loop before the engines), "HFRollout" (the default), "HFRollout static" (transformers' StaticCache,
eager), "HFRollout compiled" (``compile_decode=True``: StaticCache and a CUDA-graph decode step),
"PagedRollout", "generate" (transformers' ``generate``, dynamic cache) and "generate static"
(``cache_implementation="static"``, which transformers compiles on CUDA). First calls (compiling,
capturing, the paged manager's warm-up) are timed apart; then ``--rounds`` rounds, the first side
rotating. Last, the default HFRollout with fp32 weights under bf16 autocast (what ``PPOModule``
runs with ``precision: bf16-mixed``). A ``--deadline`` in seconds skips what would start after
it; the JSON is rewritten after every call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import traceback
from datetime import date
from pathlib import Path

import assets  # benchmarks/ is on sys.path: it holds this script
import torch

from lightning_rlhf.rollout import HFRollout, PagedRollout, SamplingOptions

EOS, PAD, COUNT0, MAX_COUNT = 2, 0, 3, 1000  # token COUNT0 + k: k tokens before EOS
BODY = 1100  # prompt bodies use ids from here up


def build_model(layers: int, hidden: int, heads: int, mlp: int, device: str, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def countdown_hook(model):
    """Logits that put all the mass on the countdown's next token (see the module docstring)."""

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        keep = kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor):  # the positions the head ran at
            ids = ids[:, keep]
        elif keep:
            ids = ids[:, -keep:]
        counting = (ids > COUNT0) & (ids <= COUNT0 + MAX_COUNT)
        target = torch.where(counting, ids - 1, torch.where(ids == COUNT0, EOS, BODY))
        logits = output.logits  # (B, T', V), T' = ids.shape[1]
        forced = torch.full_like(logits, -1e4).scatter_(-1, target[..., None], 0.0)
        output["logits"] = logits * 1e-6 + forced
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def prompts(groups: int, per_group: int, device: str):
    """(rows, 32) left-padded prompts whose last token sets the row's length, and the lengths
    (before the cut at max_new_tokens)."""
    g = torch.Generator().manual_seed(1)
    rows = groups * per_group
    lengths = torch.exp(math.log(96) + torch.randn(rows, generator=g)).round().clamp(1, MAX_COUNT)
    body = torch.randint(BODY, 32000, (groups, 32), generator=g).repeat_interleave(per_group, 0)
    ids, mask = body.clone(), torch.ones_like(body)
    ids[:, -1] = COUNT0 + lengths.long() - 1  # L - 1 countdown tokens, then EOS
    for i in range(rows):
        ids[i, : i % 8], mask[i, : i % 8] = PAD, 0
    return ids.to(device), mask.to(device), lengths.long()


def expected(lengths: torch.Tensor, new: int) -> torch.Tensor:
    """(rows, new) the countdown's responses, PAD after EOS."""
    out = torch.full((len(lengths), new), PAD, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        seq = [COUNT0 + k for k in range(n - 2, -1, -1)] + [EOS]  # n tokens
        out[i, : min(n, new)] = torch.tensor(seq[:new])
    return out


def sides(model, ids, mask, new: int):
    """{name: fn() -> (rows, new) response ids, PAD after EOS}."""
    options = SamplingOptions(new, temperature=1.0)

    def engine(e):
        e.bind(model, EOS, PAD)
        return lambda: e.generate(ids, mask, options).response_ids

    def theirs(**kw):
        def fn():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=True,
                temperature=1.0, top_k=None, top_p=None, eos_token_id=EOS, pad_token_id=PAD, **kw,
            )[:, ids.shape[1]:]  # fmt: skip
            after = (out == EOS).cumsum(1) - (out == EOS).long() > 0
            return out.masked_fill(after, PAD)

        return fn

    return {
        "loop before": engine(
            HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False)
        ),
        "HFRollout": engine(HFRollout()),
        "HFRollout compiled": engine(HFRollout(compile_decode=True)),
        "PagedRollout": engine(PagedRollout()),
        "generate": theirs(),
        "generate static": theirs(cache_implementation="static"),
        "HFRollout static": engine(HFRollout(cache="static")),
    }


class Bench:
    def __init__(self, out: Path, deadline: float, report: dict) -> None:
        self.out, self.deadline, self.report, self.t0 = out, deadline, report, time.perf_counter()

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.out.write_text(json.dumps(self.report, indent=1))

    def call(self, side: str, fn, want: torch.Tensor, key: str) -> None:
        """Runs fn once, records seconds, tokens/s, peak memory and parity under results[side]."""
        res = self.report["results"].setdefault(side, {"rounds": []})
        if self.left() <= 0:
            res.setdefault("skipped", []).append(key)
            return self.save()
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        t = time.perf_counter()
        try:
            with torch.no_grad():
                got = fn()
            torch.cuda.synchronize() if torch.cuda.is_available() else None
        except Exception as error:  # one side failing must not lose the others
            res.setdefault("errors", []).append(f"{key}: {error!r}")
            traceback.print_exc()
            return self.save()
        seconds = time.perf_counter() - t
        got = got.cpu()
        width = min(got.shape[1], want.shape[1])
        tokens = int((got != PAD).sum())
        got_full = torch.full_like(want, PAD)
        got_full[:, :width] = got[:, :width]
        entry = {
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "mismatched_rows": int((got_full != want).any(1).sum()),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else 0,
        }
        res["first_call" if key == "first" else "rounds"] = (
            entry if key == "first" else [*res["rounds"], entry]
        )
        print(f"{side:20s} {key:6s} {seconds:7.2f} s {entry['tokens_per_s']:9.0f} tokens/s "
              f"mismatched {entry['mismatched_rows']} peak {entry['peak_gb']:.1f} GB "
              f"[{self.left():.0f} s left]", flush=True)  # fmt: skip
        self.save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--groups", type=int, default=128)
    p.add_argument("--per-group", type=int, default=4)
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    spec = assets.MODELS["llama-500m"]  # the GPU suite's model
    p.add_argument("--layers", type=int, default=spec.num_layers)
    p.add_argument("--hidden", type=int, default=spec.hidden_size)
    p.add_argument("--heads", type=int, default=spec.num_heads)
    p.add_argument("--mlp", type=int, default=spec.intermediate_size)
    p.add_argument("--deadline", type=float, default=480.0, help="seconds; later calls skipped")
    p.add_argument("--only", nargs="*", help="these sides only")
    a = p.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    dims = (a.layers, a.hidden, a.heads, a.mlp)
    model = build_model(*dims, a.device, torch.bfloat16)
    hook = countdown_hook(model)
    ids, mask, lengths = prompts(a.groups, a.per_group, a.device)
    want = expected(lengths, a.new)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    report = {
        "case": f"Llama {a.layers} x {a.hidden} (32k vocabulary), bf16, {len(ids)} rows "
        f"({a.groups} prompts x {a.per_group}) of 32 tokens, up to {a.new} new",
        "device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
        "date": str(date.today()), "rounds": a.rounds,
        "lengths": {"median": float(lengths.clamp(max=a.new).median()),
                    "mean": float(lengths.clamp(max=a.new).float().mean()),
                    "cut": int((lengths > a.new).sum()), "tokens": int((want != PAD).sum())},
        "results": {},
    }  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(a.out / f"engines-gpu-{report['date']}.json", a.deadline, report)
    fns = sides(model, ids, mask, a.new)
    if a.only:
        fns = {k: v for k, v in fns.items() if k in a.only}
    for name, fn in fns.items():  # first calls: compiling, capturing, warm-ups
        bench.call(name, fn, want, "first")
    for r in range(a.rounds):
        names = list(fns)[r % len(fns) :] + list(fns)[: r % len(fns)]
        for name in names:
            bench.call(name, fns[name], want, f"r{r}")
    hook.remove()
    del model, fns
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    # what PPOModule(precision="bf16-mixed") samples with: fp32 weights, bf16 autocast
    fp32 = build_model(*dims, a.device, torch.float32)
    hook = countdown_hook(fp32)
    mixed = HFRollout().bind(fp32, EOS, PAD)

    def autocast_side():
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            return mixed.generate(ids, mask, SamplingOptions(a.new)).response_ids

    bench.call("HFRollout fp32 + autocast", autocast_side, want, "first")
    bench.call("HFRollout fp32 + autocast", autocast_side, want, "r0")
    hook.remove()
    for res in report["results"].values():
        if res["rounds"]:
            res["tokens_per_s"] = statistics.median(e["tokens_per_s"] for e in res["rounds"])
    bench.save()
    print_table(report)


def print_table(report: dict) -> None:
    print(f"\n{report['case']}; lengths {report['lengths']}")
    base = report["results"].get("loop before", {}).get("tokens_per_s")
    gen = report["results"].get("generate", {}).get("tokens_per_s")
    for side, res in report["results"].items():
        rate, first = res.get("tokens_per_s"), res.get("first_call", {}).get("seconds")
        ratios = "".join(
            f", {rate / d:.2f}x {n}"
            for n, d in (("loop before", base), ("generate", gen))
            if rate and d  # fmt: skip
        )
        print(f"{side:26s} {rate or 0:9.0f} tokens/s{ratios}; first call {first or 0:.1f} s"
              + (f"; errors {res['errors']}" if res.get("errors") else ""))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
