"""The kernels of one CPU decode step at the engines benchmark's shapes, each timed alone.

    .venv/bin/python benchmarks/cpu_kernels.py --threads 2     # ~1 min

The 58M Llama of ``engines_bench.py`` decoding 64 rows:

- each linear layer's product of 64 rows: torch's ``F.linear`` (the BLAS) against oneDNN's
  ``_linear_pointwise`` on a weight reordered ahead, as ``HFRollout(pack_cpu_weights=True)``
  runs it (``rollout/cpu_linear.py``);
- one token draw over 64 × 32k logits: ``sample_tokens`` against a one-level inverse CDF (a
  float64 cumulative sum over the whole vocabulary, the draw before the two-level one);
- attention over 160 cached positions (8 heads of 64), eight layers' caches in turn so that no
  cache is read from the processor's cache: the bytes of keys and values read per second,
  beside a plain sum over 256 MB (what the memory gives).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lightning_rlhf.rollout import SamplingOptions, sample_tokens


def timed(fn, n: int) -> float:
    """Median seconds of ``n`` calls after two warm-ups."""
    fn(), fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return sorted(out)[n // 2]


def one_level_draw(logits: torch.Tensor) -> torch.Tensor:
    probs = (logits - logits.logsumexp(-1, keepdim=True)).exp()
    cdf = probs.double().cumsum(-1)
    u = torch.rand(len(logits), 1, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = 64
    print(f"torch {torch.__version__}, {a.threads} thread(s), {rows} rows, fp32")
    layers = {"q/k/v/o": (512, 512), "gate/up": (512, 1376), "down": (1376, 512),
              "head": (512, 32000)}  # fmt: skip
    with torch.no_grad():
        for name, (n_in, n_out) in layers.items():
            w, x = torch.randn(n_out, n_in), torch.randn(rows, n_in)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
            blas = timed(lambda x=x, w=w: F.linear(x, w), 30)
            onednn = timed(
                lambda x=x, p=packed: torch.ops.mkldnn._linear_pointwise(
                    x, p, None, "none", [], ""
                ),
                30,
            )
            flops = 2 * rows * n_in * n_out
            print(f"linear {name:8s} {n_in}x{n_out}: BLAS {blas * 1e3:6.2f} ms "
                  f"({flops / blas / 1e9:5.1f} GFLOP/s), oneDNN reordered {onednn * 1e3:6.2f} ms "
                  f"({flops / onednn / 1e9:5.1f} GFLOP/s)")  # fmt: skip
        logits = torch.randn(rows, 32000) * 3
        ours = timed(lambda: sample_tokens(logits, SamplingOptions()), 50)
        before = timed(lambda: one_level_draw(logits), 50)
        print(f"draw {rows} x 32000: one-level {before * 1e3:.2f} ms, sample_tokens "
              f"{ours * 1e3:.2f} ms")  # fmt: skip
        heads, dim, length, capacity = 8, 64, 160, 288
        caches = [torch.randn(2, rows, heads, capacity, dim) for _ in range(8)]
        q = torch.randn(rows, heads, 1, dim)

        def attention():
            for kv in caches:
                F.scaled_dot_product_attention(q, kv[0, :, :, :length], kv[1, :, :, :length])

        seconds = timed(attention, 10) / len(caches)
        read = 2 * rows * heads * length * dim * 4
        big = torch.randn(64 * 1024 * 1024)
        plain = timed(big.sum, 10)
        print(f"attention: {seconds * 1e3:.2f} ms a layer, {read / seconds / 1e9:.1f} GB/s of "
              f"keys and values; a plain sum reads {big.numel() * 4 / plain / 1e9:.1f} GB/s")  # fmt: skip


if __name__ == "__main__":
    main()
