import json

import pytest
import torch

from lightning_rlhf.data import SFTDataModule
from lightning_rlhf.data.collate import best_fit_decreasing, collate_lm, collate_prompts, pad
from lightning_rlhf.data.load import load_split
from lightning_rlhf.data.sft import pack
from lightning_rlhf.data.text import (
    encode_completion,
    encode_prompt,
    fit_to_length,
    split_conversation,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pad_left_and_right():
    assert pad([[1, 2], [3]], 0).tolist() == [[1, 2], [3, 0]]
    assert pad([[1, 2], [3]], 0, side="left").tolist() == [[1, 2], [0, 3]]


def test_byte_tokenizer_prompt_has_no_eos_completion_has_one(tokenizer):
    assert encode_prompt(tokenizer, "ab") == [100, 101]
    assert encode_completion(tokenizer, "ab") == [100, 101, tokenizer.eos_token_id]


def test_truncation_cuts_prompt_left_then_completion_right():
    assert fit_to_length([1, 2, 3], [4, 5], 5) == ([1, 2, 3], [4, 5])
    assert fit_to_length([1, 2, 3], [4, 5], 4) == ([2, 3], [4, 5])
    assert fit_to_length([1, 2, 3], [4, 5, 6, 7], 3) == ([3], [4, 5])


def test_sft_prompt_tokens_carry_no_loss(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "12+3=", "completion": "15"}] * 4)
    dm = SFTDataModule(train_path=path, val_path=path, tokenizer=tiny_model_dir, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    prompt_len = len("12+3=")
    assert (batch.labels[:, :prompt_len] == -100).all()
    # completion "15" + EOS is learned, in bytes + 3
    assert batch.labels[0, prompt_len:].tolist() == [ord("1") + 3, ord("5") + 3, 1]
    assert batch.attention_mask.sum().item() == 2 * (prompt_len + 3)


def test_messages_use_plain_template_when_tokenizer_has_none(tmp_path, tiny_model_dir, tokenizer):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    prompt, completion = split_conversation(msgs, tokenizer)
    assert prompt == "user: hi\nassistant: " and completion == "yo\n"
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": msgs}] * 2)
    dm = SFTDataModule(train_path=path, val_path=None, val_fraction=0.0, tokenizer=tiny_model_dir)
    dm.setup("fit")
    ex = dm.train_set[0]
    learned = [t for t in ex["labels"] if t != -100]
    assert tokenizer.decode(learned, skip_special_tokens=True) == "yo\n"
    with pytest.raises(ValueError, match="row 0: conversation has no final assistant turn"):
        bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": msgs[:1]}])
        SFTDataModule(
            train_path=bad, val_path=None, val_fraction=0, tokenizer=tiny_model_dir
        ).setup()


def test_missing_column_lists_existing_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    dm = SFTDataModule(train_path=path, val_path=None, val_fraction=0, tokenizer=tiny_model_dir)
    with pytest.raises(
        ValueError,
        match=r"missing column\(s\) \['prompt', 'completion'\].*\['question', 'answer'\]",
    ):
        dm.setup()


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:3: malformed JSON"):
        load_split(str(path))


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid UTF-8"):
        load_split(str(path))


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist.jsonl' does not exist"):
        load_split(str(tmp_path / "does_not_exist.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_split(str(tmp_path / "empty.jsonl"))


def test_too_long_rows_are_dropped_and_counted(tmp_path, tiny_model_dir, caplog):
    rows = [{"prompt": "x" * 50, "completion": "y"}, {"prompt": "1+1=", "completion": "2"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = SFTDataModule(
        train_path=path,
        val_path=None,
        val_fraction=0,
        tokenizer=tiny_model_dir,
        max_length=16,
        truncation="drop",
    )
    dm.setup()
    assert len(dm.train_set) == 1
    assert "1 rows dropped" in caplog.text
    dm = SFTDataModule(
        train_path=path, val_path=None, val_fraction=0, tokenizer=tiny_model_dir, max_length=16
    )
    dm.setup()
    assert [len(e["input_ids"]) for e in dm.train_set] == [16, 6]
    assert dm.train_set[0]["prompt_ids"][-1] == ord("x") + 3  # the prompt's end is kept


def test_prompt_collation_is_left_padded(tokenizer):
    ex = [{"prompt_ids": [5, 6, 7], "prompt": "a"}, {"prompt_ids": [8], "prompt": "b"}]
    b = collate_prompts(ex, tokenizer.pad_token_id)
    assert b.input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_packing_matches_unpacked_loss(tiny_model_dir):
    """Packed rows restart position ids, so each example sees only itself: same loss as padded."""
    from lightning_rlhf.losses import completion_nll
    from lightning_rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir).eval()
    examples = [
        {"input_ids": [10, 11, 12, 13], "labels": [-100, -100, 12, 13]},
        {"input_ids": [20, 21, 22], "labels": [-100, 21, 22]},
    ]
    padded = collate_lm(examples, 0)
    packed = collate_lm(pack(examples, max_length=16), 0)
    assert packed.input_ids.shape == (1, 7) and packed.position_ids.tolist() == [
        [0, 1, 2, 3, 0, 1, 2]
    ]
    with torch.no_grad():
        lp = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
        lk = model(
            input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False
        ).logits
    loss_padded, _ = completion_nll(lp[:, :-1], padded.labels[:, 1:])
    loss_packed, _ = completion_nll(lk[:, :-1], packed.labels[:, 1:])
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-6)


def _best_fit_by_scan(lengths, capacity):
    """The definition, spelled out: longest first, each into the row with the least room left
    that still fits it (the first such row on ties), else a new row."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if room[r] >= lengths[i]]
        r = min(fits, key=lambda r: room[r]) if fits else len(rows)
        if not fits:
            rows.append([])
            room.append(capacity)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def test_best_fit_decreasing_matches_its_definition():
    import random

    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.randint(4, 64)
        lengths = [rng.randint(1, capacity + 8) for _ in range(rng.randint(0, 60))]  # some too long
        assert best_fit_decreasing(lengths, capacity) == _best_fit_by_scan(lengths, capacity)


def test_packing_fills_rows_best_fit_and_keeps_every_example_whole():
    """6, 5, 5, 4 tokens into rows of 10: in data order (6 | 5 5 | 4) three rows, best fit two full
    ones (6 4 | 5 5); each example's ids, labels and positions stay together."""
    examples = [
        {"input_ids": [k] * n, "labels": [-100] + [k] * (n - 1)} for k, n in enumerate((6, 5, 5, 4))
    ]
    rows = pack(examples, max_length=10)
    assert [len(r["input_ids"]) for r in rows] == [10, 10]
    assert rows[0]["input_ids"] == [0] * 6 + [3] * 4 and rows[1]["input_ids"] == [1] * 5 + [2] * 5
    assert rows[0]["labels"] == [-100] + [0] * 5 + [-100] + [3] * 3
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_batches_pad_to_a_multiple_and_the_loss_and_scores_do_not_change(tiny_model_dir):
    """Width rounded up to the multiple in every collate (prompts on the left); the extra padding
    is masked: the SFT loss and the reward scores equal the unpadded batch's."""
    from lightning_rlhf.data.collate import collate_preferences
    from lightning_rlhf.losses import completion_nll
    from lightning_rlhf.models import (
        ModelOptions,
        load_causal_lm,
        load_scalar_model,
        sequence_scores,
    )

    lm = [
        {"input_ids": [10, 11, 12, 13, 14], "labels": [-100, -100, 12, 13, 14]},
        {"input_ids": [20, 21, 22], "labels": [-100, 21, 22]},
    ]
    tight, wide = collate_lm(lm, 0), collate_lm(lm, 0, pad_to_multiple_of=8)
    assert tight.input_ids.shape == (2, 5) and wide.input_ids.shape == (2, 8)
    assert (
        torch.equal(wide.input_ids[:, :5], tight.input_ids) and not wide.attention_mask[:, 5:].any()
    )
    assert (wide.labels[:, 5:] == -100).all()
    prompts = collate_prompts([{"prompt_ids": [5, 6, 7], "prompt": "a"}], 0, pad_to_multiple_of=4)
    assert prompts.input_ids.tolist() == [[0, 5, 6, 7]] and prompts.attention_mask.tolist() == [
        [0, 1, 1, 1]
    ]
    model = load_causal_lm(tiny_model_dir).eval()
    with torch.no_grad():
        losses = [
            completion_nll(
                model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1],
                b.labels[:, 1:],
            )[0]
            for b in (tight, wide)
        ]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)

    pair = {"chosen_ids": [1, 2, 3], "rejected_ids": [1, 2], "prompt": "p", "chosen": "c",
            "rejected": "r", "chosen_response_len": 1, "rejected_response_len": 1}  # fmt: skip
    tight, wide = (
        collate_preferences([pair], 0),
        collate_preferences([pair], 0, pad_to_multiple_of=16),
    )
    assert wide.input_ids.shape == (2, 16) and wide.response_mask.shape == (2, 16)
    assert torch.equal(wide.response_mask[:, :3], tight.response_mask)
    scorer = load_scalar_model(tiny_model_dir, ModelOptions(), 0).eval()
    with torch.no_grad():
        scores = [sequence_scores(scorer, b.input_ids, b.attention_mask) for b in (tight, wide)]
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-6)
