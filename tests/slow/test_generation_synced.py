"""Synchronised generation (FSDP / ZeRO-3): a rank whose rows have all ended keeps forwarding until
every rank's have, so the ranks run the same number of forwards (each one a collective there)."""

import json
import subprocess
import sys

import pytest

# Two gloo processes. Rank 0's rows end at their first token (EOS forced); rank 1's never end
# (EOS banned), so rank 1 runs to max_new_tokens and rank 0 must keep pace with it.
SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from lightning_rlhf.models import load_causal_lm, load_tokenizer
from lightning_rlhf.rollout import SamplingOptions, generate

model_dir, rank, port, synced, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(rank)
model = load_causal_lm(model_dir).eval()
tok = load_tokenizer(model_dir, padding_side="left")
eos = tok.eos_token_id
forwards = []
model.register_forward_hook(lambda *args: forwards.append(1))
if rank == 0:
    def eos_only(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos] = 1e4
        return logits
    model.get_output_embeddings().register_forward_hook(eos_only)
enc = tok(["ab", "abc"], return_tensors="pt", padding=True)
sampling = SamplingOptions(6, min_new_tokens=6 if rank == 1 else 0)
g = generate(model, enc.input_ids, enc.attention_mask, sampling, eos, tok.pad_token_id,
             synced=synced == "1")
with open(out, "w") as f:
    json.dump({"forwards": len(forwards), "width": g.response_ids.shape[1],
               "mask": g.response_mask.tolist()}, f)
dist.destroy_process_group()
"""


def run_pair(tmp_path, model_dir, synced: bool, port: int):
    script = tmp_path / "synced.py"
    script.write_text(SCRIPT)
    outs = [tmp_path / f"rank{r}-{int(synced)}.json" for r in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                model_dir,
                str(r),
                str(port),
                str(int(synced)),
                str(outs[r]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.slow
def test_a_finished_rank_keeps_forwarding_with_the_others(tiny_model_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rank0, rank1 = run_pair(tmp_path, tiny_model_dir, synced=True, port=port)
    assert rank1["width"] == 6 and rank1["forwards"] == 6  # prefill + 5 one-token forwards
    assert rank0["forwards"] == rank1["forwards"]  # in step, though its rows ended at once
    assert rank0["width"] == 6 and rank0["mask"] == [[1, 0, 0, 0, 0, 0]] * 2

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rank0, rank1 = run_pair(tmp_path, tiny_model_dir, synced=False, port=port)
    assert rank0["forwards"] == 1 and rank0["width"] == 1  # unsynced: it stops on its own
    assert rank1["forwards"] == 6
