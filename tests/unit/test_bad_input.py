"""Bad input everywhere a user gives it.

Data: random malformed rows (missing and misnamed columns, wrong types, empty strings, None, huge
strings, odd Unicode, non-UTF-8 bytes, malformed JSON lines, identical chosen/rejected,
conversations without an assistant turn) written to files and read by every data module's real
``setup()``. Each file either gives valid batches, with every dropped row counted in the log, or
raises ValueError/FileNotFoundError from this package's own checks, naming the file.
Config: unknown keys, wrong types and impossible values through the CLI. Models: a model of the
wrong kind for the stage, a tokenizer without EOS, and a reward model with another tokenizer.
"""

import itertools
import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import lightning_rlhf
from lightning_rlhf.cli import main
from lightning_rlhf.data import PreferenceDataModule, SFTDataModule
from lightning_rlhf.data.prompts import PromptDataModule
from lightning_rlhf.models import (
    check_same_tokenizer,
    export_hf,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    sequence_scores,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(lightning_rlhf.__file__).resolve().parent
MAX_LENGTH = 24  # tokens: the huge strings below fill it many times over
EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", 60))  # per data module, ~10 ms each

# ------------------------------------------------------------------------------- strategies
GOOD = st.sampled_from(["12+34=", "46", "rev abc=", "cba", "hello world", "cnt b abb="])
BAD_TEXT = st.one_of(
    st.just(""),
    st.just("  \n\t"),
    st.just("x" * 5000),  # a prompt or response that fills the context many times over
    st.text(max_size=12),  # any Unicode, control characters included
    st.just("\u200b\ufeff\U0001f600 \u0301"),
    st.just("\ud800"),  # a lone surrogate: valid JSON escape, not valid text
)
WRONG_TYPE = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["role", "text"]), st.text(max_size=3), max_size=2),
)
BAD_CONVERSATION = st.one_of(
    st.just([]),
    st.lists(  # no final assistant turn
        st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": GOOD}),
        min_size=1,
        max_size=2,
    ),
    st.just([{"role": "user", "content": None}, {"role": "assistant", "content": "4"}]),
    st.just([{"role": "user"}, {"role": "assistant", "content": "4"}]),
    st.just(["user: hi", "assistant: yo"]),
)
FORMATS = {  # module -> {format: the columns of one good row, from two texts}
    "sft": {
        "prompt/completion": lambda a, b: {"prompt": a, "completion": b},
        "messages": lambda a, b: {
            "messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
        },
    },
    "pref": {
        "prompt/chosen/rejected": lambda a, b: {
            "prompt": a,
            "chosen": b,
            "rejected": b[::-1] + "!",
            "margin": 0.5,
        },
        "shared prefix": lambda a, b: {"chosen": f"{a} {b}", "rejected": f"{a} {b}?"},
        "messages": lambda a, b: {
            "chosen": [{"role": "user", "content": a}, {"role": "assistant", "content": b}],
            "rejected": [{"role": "user", "content": a}, {"role": "assistant", "content": b + "?"}],
        },
    },
    "prompt": {
        "prompt": lambda a, b: {"prompt": a},
        "messages": lambda a, b: {"messages": [{"role": "user", "content": a}]},
    },
}
MISNAMED = {"prompt": "Prompt", "completion": "answer", "messages": "conversation",
            "chosen": "preferred", "rejected": "dispreferred", "margin": "Margin"}  # fmt: skip
CORRUPTIONS = {  # lines that break the whole file
    "malformed JSON": b'{"prompt": "1+1=", oops}\n',
    "not UTF-8": b'{"prompt": "\xff\xfe"}\n',
    "not an object": b'["prompt", "completion"]\n',
    "truncated line": b'{"prompt": "1+',
}
ROW_FAULTS = ["missing field", "bad text", "wrong type", "bad conversation"]
FILE_FAULTS = ["misnamed column", "corrupt line", "blank lines"]


def _fault_row(draw, row: dict, fault: str) -> None:
    """Apply one row-level fault to ``row`` in place."""
    if not row:
        return
    column = draw(st.sampled_from(sorted(row)))
    if fault == "missing field":
        del row[column]
    elif fault == "bad text":
        if isinstance(row[column], list) and row[column] and isinstance(row[column][-1], dict):
            # a conversation: spoil its last message's text
            row[column][-1]["content"] = draw(BAD_TEXT)
        else:
            row[column] = draw(BAD_TEXT)
    elif fault == "wrong type":
        row[column] = draw(WRONG_TYPE)
    elif fault == "bad conversation":
        row[column] = draw(BAD_CONVERSATION)
    elif fault == "identical responses" and "chosen" in row:
        row["rejected"] = row["chosen"]


@st.composite
def dataset_file(draw, module: str):
    """(bytes of a .jsonl file, its number of rows, its faults, data module options): good rows
    of one format, then up to three faults, each in one row or across the file."""
    make_row = FORMATS[module][draw(st.sampled_from(sorted(FORMATS[module])))]
    rows = [make_row(draw(GOOD), draw(GOOD)) for _ in range(draw(st.integers(2, 6)))]
    kinds = ROW_FAULTS + FILE_FAULTS + (["identical responses"] if module == "pref" else [])
    faults = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=3))
    for fault in faults:
        if fault in ROW_FAULTS or fault == "identical responses":
            _fault_row(draw, rows[draw(st.integers(0, len(rows) - 1))], fault)
        elif fault == "misnamed column":
            names = sorted({c for row in rows for c in row} & MISNAMED.keys())
            old = draw(st.sampled_from(names)) if names else None
            for row in rows:
                if old in row:
                    row[MISNAMED[old]] = row.pop(old)
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    if "corrupt line" in faults:
        bad = CORRUPTIONS[draw(st.sampled_from(sorted(CORRUPTIONS)))]
        lines.insert(draw(st.integers(0, len(lines))), bad)
    if "blank lines" in faults:
        lines.insert(1, b"\n   \n")  # skipped, not an error
    options = {"margin_column": "margin"} if "margin" in make_row("a", "b") else {}
    return b"".join(lines), len(rows), faults, options


# ------------------------------------------------------------------------------- harness
@contextmanager
def data_log():
    """Every warning the data modules log, as text."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning_rlhf.data")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def dropped_in(log: list[str]) -> int:
    """Rows the data module said it dropped."""
    counts = [re.search(r"(\d+) (?:rows|prompts) dropped|dropped (\d+) pairs", m) for m in log]
    return sum(int(m.group(1) or m.group(2)) for m in counts if m)


def raised_here(err: BaseException) -> bool:
    """The error was raised by this package's own code, not deep inside a library."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


_files = itertools.count()


def check(spec, make, tmp: Path, tokenizer, check_batch) -> str:
    """Write the file, run the module's setup(): a clear error, or batches with every skip counted."""
    data, n_rows, faults, options = spec
    corrupt = "corrupt line" in faults
    kinds = ", ".join(sorted(set(faults))) or "no fault"
    path = tmp / f"rows_{next(_files)}.jsonl"
    path.write_bytes(data)
    dm = make(str(path), **options)
    dm.tokenizer = tokenizer  # loaded once for all examples: setup() would load the same
    with data_log() as log:
        try:
            dm.setup("fit")
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            assert raised_here(err), message
            assert path.name in message, message  # names the file
            if corrupt:  # reported at its line, or an earlier line's fault is
                assert re.search(rf"{path.name}:\d+: ", message), message
            event(f"clear error <- {kinds}")
            return "error"
    assert not corrupt
    assert dm.train_set, "setup succeeded with nothing to train on"
    assert len(dm.train_set) + dropped_in(log) == n_rows, log  # every skip is counted
    check_batch(next(iter(dm.train_dataloader())), len(tokenizer))
    event(f"batches{' with counted skips' if dropped_in(log) else ''} <- {kinds}")
    return "batches"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_rows")


COMMON = dict(val_path=None, val_fraction=0.0, batch_size=2)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("BAD_INPUT_EXAMPLES")
    is None,  # the same files on every run: CI never meets a new one by chance
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_lm_batch(b, vocab):
    assert b.input_ids.dtype == torch.long and b.input_ids.shape == b.labels.shape
    assert b.input_ids.shape[1] <= MAX_LENGTH and int(b.input_ids.max()) < vocab
    assert ((b.labels != -100).sum(1) > 0).all()  # every row has tokens to learn


def check_prompt_batch(b, vocab):
    assert b.input_ids.shape == b.attention_mask.shape and b.input_ids.shape[1] <= MAX_LENGTH
    assert (b.attention_mask.sum(1) > 0).all() and int(b.input_ids.max()) < vocab
    assert len(b.prompts) == b.input_ids.shape[0] and all(isinstance(p, str) for p in b.prompts)


def check_pair_batch(b, vocab):
    assert b.input_ids.shape[0] == 2 * len(b.prompts) and b.input_ids.shape[1] <= MAX_LENGTH
    assert (b.attention_mask.sum(1) >= 2).all() and int(b.input_ids.max()) < vocab
    n = len(b.prompts)
    assert all(c != r for c, r in zip(b.responses[:n], b.responses[n:]))


MODULES = {  # the module, its length option, and what a valid batch of it looks like
    "sft": (SFTDataModule, "max_length", check_lm_batch),
    "prompt": (PromptDataModule, "max_prompt_length", check_prompt_batch),
    "pref": (PreferenceDataModule, "max_length", check_pair_batch),
}


@pytest.mark.parametrize("module", sorted(MODULES))
@given(data=st.data())
@SETTINGS
def test_data_module_on_malformed_rows(module, data, tmp, tiny_model_dir, tokenizer):
    cls, length, check_batch = MODULES[module]

    def make(path, **options):
        kwargs = {"train_path": path, "tokenizer": tiny_model_dir, length: MAX_LENGTH}
        return cls(**kwargs, **COMMON, **options)

    check(data.draw(dataset_file(module), label="file"), make, tmp, tokenizer, check_batch)


# ------------------------------------------------------------------------------- config
def cli_error(capsys, *args) -> str:
    """Run the CLI in this process; the text it exits with (an error, never a traceback)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code not in (0, None)
    code = exit_.value.code
    return (code if isinstance(code, str) else "") + capsys.readouterr().err


@pytest.fixture
def sft_args(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's checkpoint and export directories land here
    return [
        "fit", "--config", str(ROOT / "configs/sft.yaml"),
        "--model.model_name_or_path", tiny_model_dir,
        "--data.train_path", str(task_dir / "sft_train.jsonl"), "--data.val_path", "null",
        "--trainer.logger", "false", "--trainer.max_steps", "1",
    ]  # fmt: skip


def test_unknown_key_in_a_config_file_names_it(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("data:\n  init_args:\n    batchsize: 8\n")  # batch_size
    proc = run_cli(
        "fit", "--config", str(ROOT / "configs/sft.yaml"), "--config", str(config),
        cwd=tmp_path, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "batchsize" in proc.stderr and "error:" in proc.stderr


def test_impossible_ppo_value_is_one_line_naming_the_field(tmp_path):
    proc = run_cli(
        "fit", "--model", "lightning_rlhf.PPOModule",
        "--model.policy_loss", "lightning_rlhf.ClippedSurrogate", "--model.policy_loss.clip_range", "0",
        "--data", "lightning_rlhf.PromptDataModule", cwd=tmp_path, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "policy_loss.clip_range must be > 0, got 0.0" in proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (["--data.batch_size", "abc"], "Expected a <class 'int'>. Got value: abc"),
        (["--trainer.max_steps", "-5"], "`max_steps` must be a non-negative integer"),
        (["--data.batch_size", "0"], "data.batch_size must be at least 1, got 0"),
        (["--data.pad_to_multiple_of", "0"], "data.pad_to_multiple_of must be at least 1, got 0"),
        (["--data.val_fraction", "1.5"], "val_fraction must be in [0, 1), got 1.5"),
        (["--model.schedule.warmup_steps", "-1"], "warmup_steps must be >= 0, got -1"),
        (["--data.train_path", "missing.jsonl"], "data file 'missing.jsonl' does not exist"),
    ],
)
def test_bad_config_values_give_one_clear_line(override, message, sft_args, capsys):
    err = cli_error(capsys, *sft_args, *override)
    assert message in err and "Traceback" not in err


def test_a_response_longer_than_the_context_is_refused_before_training(
    tiny_model_dir, task_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    err = cli_error(
        capsys, "fit", "--config", str(ROOT / "configs/ppo.yaml"),
        "--model.model_name_or_path", tiny_model_dir, "--model.reward", "lightning_rlhf.TaskOracle",
        "--model.critic", "lightning_rlhf.ValueHead", "--model.sampling.max_new_tokens", "100",
        "--data.train_path", str(task_dir / "prompts_train.jsonl"), "--data.val_path", "null",
        "--data.max_prompt_length", "64", "--trainer.logger", "false", "--trainer.max_steps", "1",
    )  # fmt: skip
    assert "max_new_tokens (100)" in err and "context window (128)" in err
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def odd_models(tmp_path_factory, tiny_model_dir):
    """A reward-model export, an encoder-only model, a tokenizer without EOS, and a reward model
    with its own character-level tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertModel,
        ByT5Tokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    d = tmp_path_factory.mktemp("odd_models")
    policy_tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    export_hf(load_scalar_model(tiny_model_dir, pad_token_id=0), policy_tokenizer, d / "rm")
    config = BertConfig(
        vocab_size=384, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    BertModel(config).save_pretrained(d / "bert")
    ByT5Tokenizer().save_pretrained(d / "bert")
    no_eos = ByT5Tokenizer()
    no_eos.eos_token = None
    no_eos.save_pretrained(d / "no_eos")
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    chars_tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    rm_config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0,
    )  # fmt: skip
    rm = LlamaForSequenceClassification(rm_config)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    export_hf(rm, chars_tok, d / "rm_chars")
    return d


def test_a_model_of_the_wrong_kind_for_the_stage_is_named(odd_models, tiny_model_dir):
    with pytest.raises(ValueError, match=r"rm' is a reward/value model .*needs a causal LM"):
        load_causal_lm(str(odd_models / "rm"))
    with pytest.raises(ValueError, match=r"bert' \(BertModel\) lacks 6 weights a causal LM needs"):
        load_causal_lm(str(odd_models / "bert"))
    with pytest.raises(ValueError, match=r"tiny' has no trained reward head .*random"):
        load_scalar_model(tiny_model_dir, trained_head=True)
    assert load_scalar_model(str(odd_models / "rm"), trained_head=True).config.num_labels == 1


def test_a_model_with_nan_weights_is_refused_at_load(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    export_hf(model, load_tokenizer(tiny_model_dir), tmp_path / "corrupt")
    with pytest.raises(
        ValueError, match=r"corrupt' holds non-finite weights .*\(model\.norm\.weight\)"
    ):
        load_causal_lm(str(tmp_path / "corrupt"))


def test_a_tokenizer_without_eos_is_refused_naming_it(odd_models):
    with pytest.raises(ValueError, match=r"no_eos' has no EOS token"):
        load_tokenizer(str(odd_models / "no_eos"))


def test_a_reward_model_with_another_tokenizer_scores_the_text(odd_models, tiny_model_dir):
    """The RewardModel re-tokenises text, so its tokenizer may differ from the policy's; a critic
    or reference reads the policy's ids and must share its tokenizer."""
    from lightning_rlhf.rewards import RewardModel

    rm_dir = str(odd_models / "rm_chars")
    policy_tok, rm_tok = load_tokenizer(tiny_model_dir), load_tokenizer(rm_dir)
    prompt, response = "12+34=", "46"
    assert policy_tok(prompt)["input_ids"] != rm_tok(prompt)["input_ids"]
    score = RewardModel(rm_dir, normalize=False)([prompt], [response])
    ids = rm_tok(prompt + response)["input_ids"] + [rm_tok.eos_token_id]  # what it was trained on
    model = load_scalar_model(rm_dir, trained_head=True).eval()
    with torch.no_grad():
        expected = sequence_scores(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=int))
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"critic '.*rm_chars' has another tokenizer than the"):
        check_same_tokenizer(tiny_model_dir, rm_dir, "critic")
    check_same_tokenizer(tiny_model_dir, str(odd_models / "rm"), "critic")  # same: no error


def test_missing_model_path_is_named_by_every_loader(tmp_path):
    from lightning_rlhf.rewards import RewardModel

    missing = str(tmp_path / "no_such_model")
    for load in (load_tokenizer, load_causal_lm, load_scalar_model, RewardModel):
        with pytest.raises(FileNotFoundError, match=r"no_such_model' is neither a local directory"):
            load(missing)
