"""PreferenceDataModule: the three input formats, dropped pairs, errors, truncation, collation."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_rlhf.data import PreferenceDataModule
from lightning_rlhf.data.preference import fit_pair, split_shared_prefix

EOS = 1  # the byte tokenizer: 0 pad, 1 EOS, byte b -> b + 3


def b(text: str) -> list[int]:
    return [c + 3 for c in text.encode()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def setup_dm(path, tiny_model_dir, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(
        train_path=path, val_path=None, val_fraction=0, tokenizer=tiny_model_dir, **kwargs
    )
    dm.setup("fit")
    return dm


def test_prompt_chosen_rejected_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "11"}])
    (ex,) = setup_dm(path, tiny_model_dir).train_set
    assert (ex["prompt"], ex["chosen"], ex["rejected"], ex["margin"]) == ("1+1=", "2", "11", 0.0)
    assert ex["chosen_ids"] == b("1+1=") + b("2") + [EOS]
    assert ex["rejected_ids"] == b("1+1=") + b("11") + [EOS]


def test_split_shared_prefix_cuts_at_whitespace():
    # the common prefix "Q: go" ends mid-word: back to the space before it
    assert split_shared_prefix("Q: go now", "Q: gone") == ("Q: ", "go now", "gone")
    # it ends right after a space: kept whole
    assert split_shared_prefix("Q: a b", "Q: a c") == ("Q: a ", "b", "c")
    # one text is a prefix of the other
    assert split_shared_prefix("Q: hi there", "Q: hi there friend") == (
        "Q: hi ",
        "there",
        "there friend",
    )
    assert split_shared_prefix("yes", "no") == ("", "yes", "no")
    assert split_shared_prefix("Q:\nyes", "Q:\nyeah") == ("Q:\n", "yes", "yeah")


def test_full_texts_without_prompt_column_share_their_prefix(tmp_path, tiny_model_dir):
    rows = [
        {
            "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It's five.",
        },
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello there",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hell no",
        },
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    first, second = setup_dm(path, tiny_model_dir).train_set
    prompt = "\n\nHuman: What is 2+2?\n\nAssistant: "
    assert (first["prompt"], first["chosen"], first["rejected"]) == (
        prompt,
        "It is 4.",
        "It's five.",
    )
    assert first["chosen_ids"] == b(prompt) + b("It is 4.") + [EOS]
    assert (second["prompt"], second["chosen"], second["rejected"]) == (
        "\n\nHuman: Hi\n\nAssistant: ",
        "Hello there",
        "Hell no",
    )


def test_conversations_use_the_plain_chat_template(tmp_path, tiny_model_dir):
    user = {"role": "user", "content": "hi"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "yo"}],
            "rejected": [user, {"role": "assistant", "content": "go away"}],
        },
        {  # two turns: every turn but the last is the prompt
            "chosen": [
                user,
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ],
            "rejected": [
                user,
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "5"},
            ],
        },
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    first, second = setup_dm(path, tiny_model_dir).train_set
    assert (first["prompt"], first["chosen"], first["rejected"]) == (
        "user: hi\nassistant: ",
        "yo\n",
        "go away\n",
    )
    assert first["chosen_ids"] == b("user: hi\nassistant: yo\n") + [EOS]
    assert first["rejected_ids"] == b("user: hi\nassistant: go away\n") + [EOS]
    assert second["prompt"] == "user: hi\nassistant: yo\nuser: 2+2?\nassistant: "
    assert (second["chosen"], second["rejected"]) == ("4\n", "5\n")


@pytest.mark.parametrize(
    ("rejected", "message"),
    [
        ([{"role": "user", "content": "hey"}, {"role": "assistant", "content": "no"}], "share"),
        ([{"role": "user", "content": "hi"}], "no final assistant turn"),
        ([], "no final assistant turn"),
    ],
)
def test_unusable_conversation_names_the_row(tmp_path, tiny_model_dir, rejected, message):
    chosen = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    good = {"chosen": chosen, "rejected": [chosen[0], {"role": "assistant", "content": "go"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [good, {"chosen": chosen, "rejected": rejected}])
    with pytest.raises(ValueError, match=f"c.jsonl.* row 1: .*{message}"):
        setup_dm(path, tiny_model_dir)


def test_custom_column_names_and_margin(tmp_path, tiny_model_dir):
    rows = [
        {"question": "1+1=", "good": "2", "bad": "3", "gap": 0.5},
        {"question": "2+2=", "good": "4", "bad": "5", "gap": 2},
        {"question": "3+3=", "good": "6", "bad": "7", "gap": -1.25},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    columns = dict(prompt_column="question", chosen_column="good", rejected_column="bad")
    dm = setup_dm(path, tiny_model_dir, margin_column="gap", batch_size=3, **columns)
    assert [e["chosen_ids"] for e in dm.train_set][1] == b("2+2=4") + [EOS]
    batch = next(iter(DataLoader(dm.train_set, dm.hparams.batch_size, collate_fn=dm._collate())))
    assert batch.margin.dtype == torch.float32
    assert batch.margin.tolist() == [0.5, 2.0, -1.25]
    assert batch.prompts == ["1+1=", "2+2=", "3+3="]
    # without margin_column the margins are zeros
    batch = next(iter(setup_dm(path, tiny_model_dir, **columns).train_dataloader()))
    assert batch.margin.tolist() == [0.0, 0.0, 0.0]


def test_identical_and_empty_pairs_are_dropped_and_counted(tmp_path, tiny_model_dir, caplog):
    rows = [
        {"prompt": "1+1=", "chosen": "2", "rejected": "2"},
        {"prompt": "1+2=", "chosen": "3", "rejected": "4"},
        {"prompt": "1+3=", "chosen": "", "rejected": "4"},
        {"prompt": "1+4=", "chosen": "5", "rejected": " \n"},
        {"prompt": "1+5=", "chosen": "6", "rejected": "6"},
        {"prompt": "1+6=", "chosen": "7", "rejected": "8"},
        {"prompt": "1+7=", "chosen": "", "rejected": "9"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = setup_dm(path, tiny_model_dir)
    assert [e["prompt"] for e in dm.train_set] == ["1+2=", "1+6="]
    assert "d.jsonl [train]: dropped 2 pairs (identical chosen and rejected)" in caplog.text
    assert "d.jsonl [train]: dropped 3 pairs (empty response)" in caplog.text


def test_identical_full_texts_are_dropped(tmp_path, tiny_model_dir, caplog):
    text = "\n\nHuman: Hi\n\nAssistant: Hello"
    rows = [{"chosen": text, "rejected": text}, {"chosen": text, "rejected": text + "!"}]
    dm = setup_dm(write_jsonl(tmp_path / "hh.jsonl", rows), tiny_model_dir)
    assert len(dm.train_set) == 1 and dm.train_set[0]["rejected"] == "Hello!"
    assert "dropped 1 pairs (identical chosen and rejected)" in caplog.text


def test_no_usable_pair_names_the_file(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": "a", "chosen": "x", "rejected": "x"},
        {"prompt": "b", "chosen": "", "rejected": "y"},
    ]
    path = write_jsonl(tmp_path / "useless.jsonl", rows)
    with pytest.raises(ValueError, match=r"useless.jsonl.*no usable pairs among 2 rows"):
        setup_dm(path, tiny_model_dir)


def test_missing_column_lists_existing_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "good": "b", "rejected": "c"}])
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['chosen'\].*\['prompt', 'good', 'rejected'\]"
    ):
        setup_dm(path, tiny_model_dir)
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['gap'\]"):
        setup_dm(write_jsonl(tmp_path / "m.jsonl", rows), tiny_model_dir, margin_column="gap")


def test_fit_pair_keeps_the_end_of_the_response():
    assert fit_pair([1, 2], [3, 4], 10) == [1, 2, 3, 4]
    assert fit_pair([1, 2, 3], [4, 5, 6], 4) == [3, 4, 5, 6]
    assert fit_pair([1, 2, 3], [4, 5, 6, 7, 8], 4) == [3, 6, 7, 8]  # one prompt token is kept
    assert fit_pair([], [4, 5, 6, 7, 8], 3) == [7, 8]


def test_truncation_keeps_the_end_of_each_response(tmp_path, tiny_model_dir):
    rows = [{"prompt": "rev abcdefghij=", "chosen": "jihgfedcba", "rejected": "xy"}]
    (ex,) = setup_dm(
        write_jsonl(tmp_path / "p.jsonl", rows), tiny_model_dir, max_length=8
    ).train_set
    assert len(ex["chosen_ids"]) == len(ex["rejected_ids"]) == 8
    assert ex["chosen_ids"] == b("=") + b("jihgfedcba")[-6:] + [EOS]  # its EOS, where it's scored
    assert ex["rejected_ids"] == b("ghij=") + b("xy") + [EOS]
    assert ex["chosen"] == "jihgfedcba"  # the texts are whole


def test_collated_batch_is_chosen_rows_then_rejected_rows(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": f"{i}+{i}=", "chosen": str(2 * i), "rejected": str(2 * i + 1) * (i % 3 + 1)}
        for i in range(10)
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    dm = PreferenceDataModule(
        train_path=path, val_path=path, tokenizer=tiny_model_dir, batch_size=4
    )
    dm.setup("fit")
    for loader, shuffled in ((dm.val_dataloader(), False), (dm.train_dataloader(), True)):
        batch = next(iter(loader))
        n = len(batch.prompts)
        assert n == 4 and batch.input_ids.shape[0] == 8 and batch.margin.shape == (4,)
        if not shuffled:
            assert batch.prompts == ["0+0=", "1+1=", "2+2=", "3+3="]
        by_prompt = {e["prompt"]: e for e in dm.train_set}
        for i, prompt in enumerate(batch.prompts):
            ex = by_prompt[prompt]
            for row, ids, text in (
                (i, ex["chosen_ids"], ex["chosen"]),
                (n + i, ex["rejected_ids"], ex["rejected"]),
            ):
                length = int(batch.attention_mask[row].sum())
                assert length == len(ids)
                assert batch.input_ids[row, :length].tolist() == ids  # right-padded
                assert (batch.input_ids[row, length:] == 0).all()
                assert batch.responses[row] == text


@pytest.mark.parametrize(
    ("second", "margin_column", "message"),
    [
        ({"prompt": None, "chosen": "4", "rejected": "5"}, None, r"'prompt' must be text, got NoneType"),
        ({"prompt": "2+2=", "chosen": "4", "rejected": "5", "gap": None}, "gap",
         r"margin column 'gap' must be a finite number, got None"),
        ({"prompt": "2+2=", "chosen": "4", "rejected": "5", "gap": float("nan")}, "gap",
         r"margin column 'gap' must be a finite number, got nan"),
    ],
)  # fmt: skip
def test_bad_prompt_or_margin_names_the_row_and_column(
    tmp_path, tiny_model_dir, second, margin_column, message
):
    first = {"prompt": "1+1=", "chosen": "2", "rejected": "3", "gap": 1.0}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")  # NaN as JSON's NaN
    with pytest.raises(ValueError, match=rf"p.jsonl.* row 1: {message}"):
        setup_dm(str(path), tiny_model_dir, margin_column=margin_column)


def test_full_texts_without_a_prompt_column_are_split_with_a_warning(
    tmp_path, tiny_model_dir, caplog
):
    rows = [{"chosen": "Q: 1+1= A: 2", "rejected": "Q: 1+1= A: 3"}]
    with caplog.at_level("WARNING"):
        dm = setup_dm(write_jsonl(tmp_path / "hh.jsonl", rows), tiny_model_dir)
    assert "no 'prompt' column" in caplog.text and "shared beginning" in caplog.text
    assert dm.train_set[0]["prompt"] == "Q: 1+1= A: "


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_free_scores_equal_the_padded_ones(tiny_model_dir, side):
    """Sequences packed into rows (position ids restarting, no padding) score as they do padded,
    under either padding side, and gradients agree too."""
    from lightning_rlhf.data.collate import pad
    from lightning_rlhf.models import load_scalar_model, sequence_scores
    from lightning_rlhf.modules.reward import packed_sequence_scores

    torch.manual_seed(0)
    model = load_scalar_model(tiny_model_dir, pad_token_id=0).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    seqs = [list(range(3, 3 + n)) for n in (17, 5, 9, 12, 3, 20)]  # 66 tokens in 6 x 20 slots
    ids = pad(seqs, 0, side=side)
    mask = pad([[1] * len(s) for s in seqs], 0, side=side)
    padded = sequence_scores(model, ids, mask)
    packed = packed_sequence_scores(model, ids, mask, pad_id=0)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    assert padded.std() > 1e-3  # distinct scores: a mix-up between sequences would show
    grads = []
    for scores in (sequence_scores, lambda *a: packed_sequence_scores(*a, pad_id=0)):
        model.zero_grad()
        scores(model, ids, mask).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
