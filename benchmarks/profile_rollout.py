"""Where a rollout's CPU time goes: the operations taking the most self time in one call of the
loop before the engines
(``HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False)``) and of
``HFRollout()``, on benchmarks/engines_bench.py's 58M Llama.

    .venv/bin/python benchmarks/profile_rollout.py --rows 16 --new 128 --threads 1 [--ragged]

``--ragged`` gives EOS 2/N of the mass at every step (engines_bench's long-tailed case); both
sides then draw the same tokens from the same seed, and each reports the rows it forwarded
summed over the decode steps: the loop before forwards every row until the longest ends.
"""

from __future__ import annotations

import argparse

import torch
from engines_bench import EOS, PAD, eos_share_hook, model_58m
from torch.profiler import ProfilerActivity, profile

from lightning_rlhf.rollout import HFRollout, SamplingOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ragged", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = model_58m()
    ids = torch.randint(3, 32000, (args.rows, 32))
    mask = torch.ones_like(ids)
    options = SamplingOptions(args.new, min_new_tokens=0 if args.ragged else args.new)
    if args.ragged:
        eos_share_hook(model, 2 / args.new)
    forwarded = [0]  # rows forwarded by the decode steps (the prefill's are not counted)
    model.register_forward_hook(
        lambda m, i, kw, out: (
            forwarded.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] == 1 else None
        ),
        with_kwargs=True,
    )
    sides = {
        "loop before": HFRollout(compact_finished=False, cache="dynamic", pack_cpu_weights=False),
        "HFRollout": HFRollout(),
    }
    for name, engine in sides.items():
        engine.bind(model, EOS, PAD)
        forwarded[:] = [0]
        torch.manual_seed(0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = engine.generate(ids, mask, options)
        lengths = out.response_mask.sum(1).tolist()
        print(f"{name}: response lengths {sorted(lengths)}, {sum(forwarded)} rows forwarded")
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
        print(f"{name}: {total / 1e6:.1f} s of self CPU time; the top operations:")
        for e in top:
            print(f"  {e.key:32s} {e.self_cpu_time_total / 1e6:6.2f} s "
                  f"({e.self_cpu_time_total / total:5.1%}), {e.count} calls")  # fmt: skip


if __name__ == "__main__":
    main()
