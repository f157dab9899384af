"""The benchmark's model, tokenizer and data, built locally from a seed: nothing is downloaded.

Each model size gets a BPE tokenizer trained with the ``tokenizers`` library on generated text
(4k tokens for the small model, 32k for the large one, so its LM head weighs as in real models), the
package's tiny Llama (``lightning_rlhf.tiny``) at the size's dimensions with that vocabulary, saved
as an ordinary Hugging Face directory, a reward model on the same backbone
(``AutoModelForSequenceClassification``, the critic's and the reward's initialisation in PPO), and
JSONL data whose token counts are exact:

    sft_fixed.jsonl    prompt/completion, every example the same number of tokens (no padding)
    sft_var.jsonl      prompt/completion, lengths drawn uniformly (padding or packing matters)
    pref_fixed.jsonl   prompt/chosen/rejected, fixed lengths
    pref_var.jsonl     prompt/chosen/rejected, variable lengths
    prompts.jsonl      PPO prompts, fixed length (no padding on either side)

Text is built from whole words, each carrying its leading space, and the tokenizer's pre-tokenizer
splits at spaces, so a text's token count is the sum of its words' counts: prompt + completion
tokenised apart (ours) or together (TRL) give the same ids.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: pad never occurs in the data
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["ch", "sh", "th"]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: a Llama config and its tokenizer's vocabulary size."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 512


MODELS = {
    "llama-5m": ModelSpec("llama-5m", 4096, 256, 4, 4, 1024),
    "llama-25m": ModelSpec("llama-25m", 32000, 384, 6, 6, 1536),
    "llama-500m": ModelSpec("llama-500m", 32000, 1024, 28, 16, 4096),  # the GPU suite's
}


@dataclass(frozen=True)
class DataSpec:
    """Token lengths of the generated data. Ranges are inclusive; fixed data use the low end."""

    sft_prompt: tuple[int, int] = (8, 120)
    sft_completion: tuple[int, int] = (8, 128)
    sft_fixed: tuple[int, int] = (64, 63)  # + EOS: 128 tokens per example
    pref_prompt: tuple[int, int] = (8, 96)
    pref_response: tuple[int, int] = (4, 63)
    pref_fixed: tuple[int, int] = (48, 15)  # + EOS: 64 tokens per sequence
    ppo_prompt: int = 32
    rows: int = 512


# --------------------------------------------------------------------------------- words
def _words(n: int, rng: random.Random) -> list[str]:
    """n distinct pseudo-words of 1-4 syllables."""
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(out)


class WordSampler:
    """Zipf-distributed words (rank r drawn with weight 1/r), like natural text."""

    def __init__(self, words: list[str], rng: random.Random) -> None:
        self.words, self.rng = words, rng
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))

    def sample(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum_weights, k=k)


# --------------------------------------------------------------------------------- tokenizer
def train_tokenizer(out_dir: Path, vocab_size: int, seed: int = 0):
    """A BPE tokenizer with a Metaspace pre-tokenizer (splits at spaces), saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    sampler = WordSampler(_words(60_000, rng), rng)
    corpus = (" ".join(sampler.sample(200)) for _ in range(6_000))  # 1.2M words
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)
    return fast, sampler.words


# --------------------------------------------------------------------------------- data
class TextBuilder:
    """Texts of an exact token count under one tokenizer, from Zipf-sampled words."""

    def __init__(self, tokenizer, words: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.sampler = WordSampler(words, self.rng)
        costs = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
        self.cost = {w: len(ids) for w, ids in zip(words, costs)}
        self.single = [w for w in words[:2000] if self.cost[w] == 1]

    def text(self, n_tokens: int) -> str:
        """Words, each with its leading space, whose token counts sum to exactly n_tokens."""
        out, left = [], n_tokens
        while left > 0:
            (w,) = self.sampler.sample(1)
            if self.cost[w] > left:
                w = self.rng.choice(self.single)
            out.append(" " + w)
            left -= self.cost[w]
        return "".join(out)


def _length(rng: random.Random, span: tuple[int, int], fixed: bool) -> int:
    return span[0] if fixed else rng.randint(*span)


def write_data(out_dir: Path, tokenizer, words: list[str], spec: DataSpec, seed: int) -> None:
    """The five JSONL files of the module docstring. Completions exclude EOS (both sides add it)."""
    b = TextBuilder(tokenizer, words, seed)
    rng = random.Random(seed + 1)
    out_dir.mkdir(parents=True, exist_ok=True)

    def dump(name: str, rows: list[dict]) -> None:
        with (out_dir / name).open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    for fixed, tag in ((True, "fixed"), (False, "var")):
        p_span = (spec.sft_fixed[0],) * 2 if fixed else spec.sft_prompt
        c_span = (spec.sft_fixed[1],) * 2 if fixed else spec.sft_completion
        dump(
            f"sft_{tag}.jsonl",
            [
                {
                    "prompt": b.text(_length(rng, p_span, fixed)),
                    "completion": b.text(_length(rng, c_span, fixed)),
                }
                for _ in range(spec.rows)
            ],
        )
        p_span = (spec.pref_fixed[0],) * 2 if fixed else spec.pref_prompt
        r_span = (spec.pref_fixed[1],) * 2 if fixed else spec.pref_response
        dump(
            f"pref_{tag}.jsonl",
            [
                {
                    "prompt": b.text(_length(rng, p_span, fixed)),
                    "chosen": b.text(_length(rng, r_span, fixed)),
                    "rejected": b.text(_length(rng, r_span, fixed)),
                }
                for _ in range(spec.rows)
            ],
        )
    dump("prompts.jsonl", [{"prompt": b.text(spec.ppo_prompt)} for _ in range(spec.rows)])


# --------------------------------------------------------------------------------- models
def causal_lm(spec: ModelSpec, tokenizer, seed: int):
    """The package's tiny Llama (``lightning_rlhf.tiny.tiny_llama``) at ``spec``'s sizes with
    ``tokenizer``'s vocabulary, pad and EOS ids."""
    from lightning_rlhf.tiny import tiny_llama

    if spec.intermediate_size != 4 * spec.hidden_size:
        raise ValueError(f"{spec.name}: the tiny builder's MLP is 4 × hidden")
    return tiny_llama(
        tokenizer, spec.hidden_size, spec.num_layers, spec.num_heads, spec.max_positions, seed
    )


def write_models(out_dir: Path, spec: ModelSpec, tokenizer, seed: int) -> None:
    """``lm``: the causal LM; ``rm``: the same backbone with a scalar head (reward and critic);
    ``policy``: the LM whose generation config suppresses EOS and pad, so that every response of
    TRL's PPO runs to its maximum length (ours reads no generation config: its worker sets
    ``min_new_tokens``), for equal work per step."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = causal_lm(spec, tokenizer, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir / "lm")
    tokenizer.save_pretrained(out_dir / "lm")
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.eos_token_id]
    model.save_pretrained(out_dir / "policy")
    tokenizer.save_pretrained(out_dir / "policy")
    torch.manual_seed(seed + 1)
    rm = AutoModelForSequenceClassification.from_pretrained(out_dir / "lm", num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(out_dir / "rm")
    tokenizer.save_pretrained(out_dir / "rm")


def build(cache: Path, model: str, data: DataSpec, seed: int = 0) -> Path:
    """Build (once) the tokenizer, models and data of one model size under ``cache/<model>``."""
    spec = MODELS[model]
    root = cache / model
    stamp = root / "spec.json"
    wanted = {"model": asdict(spec), "data": asdict(data), "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(wanted)):
        return root
    tokenizer, words = train_tokenizer(root / "tokenizer", spec.vocab_size, seed)
    write_models(root, spec, tokenizer, seed)
    write_data(root / "data", tokenizer, words, data, seed)
    stamp.write_text(json.dumps(wanted, indent=2))
    return root
