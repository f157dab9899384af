"""Real data and real tokenizers: what the data modules refuse instead of training on nonsense."""

import json
import logging

import pytest

from lightning_rlhf.data import PreferenceDataModule, SFTDataModule
from lightning_rlhf.data.prompts import PromptDataModule


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def empty_tokenizer_dir(tmp_path_factory):
    """A tokenizer whose vocabulary holds only its special tokens: every text encodes to [] (as a
    model directory whose tokenizer files do not match its class does)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(BPE(vocab={}, merges=[])),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    out = tmp_path_factory.mktemp("empty_tok")
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(
    "module, row",
    [
        (SFTDataModule, {"prompt": "Human: hi", "completion": "hello"}),
        (PreferenceDataModule, {"prompt": "Human: hi", "chosen": "hello", "rejected": "go"}),
        (PromptDataModule, {"prompt": "Human: hi"}),
    ],
)
def test_a_tokenizer_that_encodes_text_to_nothing_is_refused(
    module, row, empty_tokenizer_dir, tmp_path
):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{**row, "prompt": " ", "completion": " ", "chosen": " "}, row, row]
    )  # row 0: blank, dropped
    dm = module(
        train_path=path, val_path=None, val_fraction=0.0, tokenizer=empty_tokenizer_dir,
        batch_size=1,
    )  # fmt: skip
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert f"{path} [train] row 1: the tokenizer TokenizersBackend of" in message, message
    assert empty_tokenizer_dir in message and "'Human: hi' to no tokens" in message, message


def test_prompts_from_conversations_leave_out_their_final_answers(tmp_path, tiny_model_dir, caplog):
    user, answer = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    rows = [
        {"messages": [user, answer]},  # an SFT conversation: its answer must not be the prompt's
        {"messages": [user, answer, {"role": "assistant", "content": "more"}]},
        {"messages": [user, answer, {"role": "user", "content": "and?"}]},  # kept whole
        {"messages": [answer]},  # nothing but an answer: no prompt, dropped
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    dm = PromptDataModule(
        train_path=path, val_path=None, val_fraction=0.0, tokenizer=tiny_model_dir, batch_size=1
    )
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf"):
        dm.setup("fit")
    assert [e["prompt"] for e in dm.train_set] == [
        "user: hi\nassistant: ",
        "user: hi\nassistant: ",
        "user: hi\nassistant: yo\nuser: and?\nassistant: ",
    ]
    assert "3 conversations ended with assistant turns" in caplog.text
    assert "1 prompts dropped" in caplog.text


def test_a_text_of_special_tokens_alone_is_not_taken_for_a_broken_tokenizer(tokenizer):
    from lightning_rlhf.data.text import encode_completion, encode_prompt

    assert encode_completion(tokenizer, "</s>") == [tokenizer.eos_token_id]
    assert encode_prompt(tokenizer, "") == []
