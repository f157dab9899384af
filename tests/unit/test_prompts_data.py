"""The RL stage's prompts: the resumable shuffle, the loader's saved position, PromptDataModule."""

import json
import logging
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rlhf.data.collate import collate_prompts
from lightning_rlhf.data.prompts import PromptDataModule, ResumableLoader, ResumableSampler
from lightning_rlhf.data.text import encode_prompt


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows(n):
    return [{"prompt_ids": [3 + i], "prompt": f"p{i}"} for i in range(n)]


def make_loader(n=22, batch_size=4, seed=3, **kwargs):
    collate = partial(collate_prompts, pad_token_id=0)
    return ResumableLoader(rows(n), batch_size, seed, collate, **kwargs)


def prompts_of(batches):
    return [b.prompts for b in batches]


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


# ------------------------------------------------------------------------------- sampler
def test_sampler_is_a_seeded_permutation_per_epoch():
    a, b, c = ResumableSampler(50, seed=1), ResumableSampler(50, seed=1), ResumableSampler(50, 2)
    first, second = list(a), list(a)
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second  # a new shuffle each epoch
    assert first == list(b) and second == list(b)  # the same seed gives the same epochs
    assert list(c) != first
    assert a.epoch == 2


def test_sampler_moves_to_the_next_epoch_even_when_a_pass_is_not_read_to_the_end():
    s = ResumableSampler(30, seed=0)
    it = iter(s)
    # Lightning stops after len(loader) batches: the pass never raises StopIteration
    head = [next(it) for _ in range(5)]
    assert s.epoch == 1
    second = list(s)
    fresh = ResumableSampler(30, seed=0)
    fresh.epoch = 1
    assert second == list(fresh)
    assert sorted(second) == list(range(30)) and second != head + list(it)


def test_sampler_starts_part_way_and_reports_the_whole_epoch_length():
    s = ResumableSampler(20, seed=5)
    order = list(ResumableSampler(20, seed=5))
    s.start = 8
    assert len(s) == 20  # Lightning counts the resumed epoch's batches from its start
    assert list(s) == order[8:]
    assert s.start == 0 and len(s) == 20


def test_sampler_shards_are_disjoint_and_equal_sized(monkeypatch):
    """Two ranks split one permutation; an odd count drops one index so both run as many steps."""
    n, world = 21, 2
    shards = []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
        shards.append(list(ResumableSampler(n, seed=4)))
    monkeypatch.undo()
    assert len(shards[0]) == len(shards[1]) == n // world
    assert not set(shards[0]) & set(shards[1])
    whole = list(ResumableSampler(n, seed=4))
    assert shards[0] == whole[: n - 1][0::2] and shards[1] == whole[: n - 1][1::2]


# ------------------------------------------------------------------------------- loader
def test_loader_state_counts_batches_handed_out():
    loader = make_loader()  # 22 prompts, batch 4: 5 batches an epoch, 2 prompts left over
    assert len(loader) == 5
    assert loader.state_dict() == {"epoch": 0, "start": 0}
    it = iter(loader)
    take(it, 2)
    assert loader.state_dict() == {"epoch": 0, "start": 8}


def test_loader_with_prefetch_does_not_count_the_batch_held_ahead():
    """A consumer that holds one batch ahead (``prefetched=1``) resumes at that batch."""
    loader = make_loader(prefetched=1)
    it = iter(loader)
    batches = take(it, 3)  # 2 trained on, the third held ahead
    assert loader.state_dict() == {"epoch": 0, "start": 8}
    fresh = make_loader(prefetched=1)
    fresh.load_state_dict(loader.state_dict())
    assert prompts_of(take(iter(fresh), 1)) == prompts_of(batches[2:3])


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_loader_round_trip_yields_exactly_what_the_first_would_have(k):
    first = make_loader()
    it = iter(first)
    take(it, k)
    state = first.state_dict()
    expected = prompts_of(list(it)) + prompts_of(list(first))  # rest of epoch 0, all of epoch 1
    fresh = make_loader()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    got = prompts_of(list(fresh)) + prompts_of(list(fresh))
    assert got == expected
    assert len(got) == 5 - k + 5


def test_loader_state_after_the_last_batch_points_to_the_next_epoch():
    loader = make_loader()
    exhausted = list(loader)
    assert len(exhausted) == 5 and loader.state_dict() == {"epoch": 1, "start": 0}
    # Lightning stops after len(loader) batches without exhausting the iterator
    it = iter(loader)
    second = take(it, 5)
    assert loader.state_dict() == {"epoch": 2, "start": 0}
    assert prompts_of(second) != prompts_of(exhausted)
    fresh = make_loader()
    fresh.load_state_dict({"epoch": 1, "start": 0})
    assert prompts_of(list(fresh)) == prompts_of(second)


def test_loader_does_not_draw_from_the_global_rng():
    """A resumed run calls iter() at another point than an uninterrupted one: it must not move
    the sampling RNG."""
    loader = make_loader()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(loader)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------- through Lightning
class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.prompts)
        opt = self.optimizers()
        self.manual_backward((self.w**2).sum())
        opt.step()
        opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def twenty_prompts(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("prompts20")
    return write_jsonl(d / "p.jsonl", [{"prompt": f"{i}+1="} for i in range(20)])


def _fit(path, tokenizer, ckpt_dir, max_steps, ckpt_path=None):
    dm = PromptDataModule(
        train_path=path, val_path=None, val_fraction=0, tokenizer=tokenizer, batch_size=4, seed=1
    )
    module = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        default_root_dir=ckpt_dir,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module.seen


def test_lightning_resume_continues_the_prompt_stream(twenty_prompts, tiny_model_dir, tmp_path):
    """20 prompts, batch 4: 5 batches an epoch. Each epoch is a new permutation; resuming from the
    checkpoint after any batch (mid-epoch or the epoch's last) continues where the run was."""
    seen = _fit(twenty_prompts, tiny_model_dir, tmp_path / "a", max_steps=12)
    assert len(seen) == 12
    epochs = [sum(seen[i : i + 5], []) for i in (0, 5)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"{i}+1=" for i in range(20))
    assert epochs[0] != epochs[1]
    for step, epoch in ((3, 0), (5, 0)):
        ckpt = tmp_path / "a" / f"epoch={epoch}-step={step}.ckpt"
        resumed = _fit(twenty_prompts, tiny_model_dir, tmp_path / f"b{step}", 12, str(ckpt))
        assert resumed == seen[step:], step


# ------------------------------------------------------------------------------- data module
def _dm(path, tokenizer, **kwargs):
    kwargs = {"val_path": None, "val_fraction": 0.0, "batch_size": 1, **kwargs}
    return PromptDataModule(train_path=path, tokenizer=tokenizer, **kwargs)


def test_empty_prompts_are_dropped_and_counted(tmp_path, tiny_model_dir, caplog):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "1+2="},
            {"prompt": ""},
            {"prompt": "  \n"},
            {"prompt": None},
            {"prompt": "rev ab="},
        ],
    )
    dm = _dm(path, tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf.data.prompts"):
        dm.setup("fit")
    assert [r["prompt"] for r in dm.train_set] == ["1+2=", "rev ab="]
    assert "3 prompts dropped" in caplog.text and "0 truncated" in caplog.text


def test_long_prompts_keep_their_end_or_are_dropped(tmp_path, tiny_model_dir, tokenizer, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abcdefghij"}, {"prompt": "xy"}])
    dm = _dm(path, tiny_model_dir, max_prompt_length=4)
    with caplog.at_level(logging.WARNING, logger="lightning_rlhf.data.prompts"):
        dm.setup("fit")
    assert "1 truncated" in caplog.text
    long, short = dm.train_set
    assert long["prompt_ids"] == encode_prompt(tokenizer, "ghij")  # the end the answer follows
    assert long["prompt"] == "ghij"  # the reward sees the prompt the policy sees
    assert short["prompt_ids"] == encode_prompt(tokenizer, "xy")
    dropped = _dm(path, tiny_model_dir, max_prompt_length=4, truncation="drop")
    dropped.setup("fit")
    assert [r["prompt"] for r in dropped.train_set] == ["xy"]
    batch = next(iter(dm.train_dataloader()))
    assert batch.input_ids.shape[1] <= 4


def test_too_few_train_prompts_for_one_batch_name_the_file(tmp_path, tiny_model_dir):
    path = write_jsonl(
        tmp_path / "few.jsonl", [{"prompt": f"{i}+1="} for i in range(3)] + [{"prompt": ""}]
    )
    with pytest.raises(
        ValueError, match=r"few\.jsonl.*3 usable prompts, fewer than one batch \(4\)"
    ):
        _dm(path, tiny_model_dir, batch_size=4).setup("fit")


def test_a_small_validation_file_is_not_held_to_the_train_batch_size(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"{i}+1="} for i in range(8)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "5+5="}, {"prompt": "6+6="}])
    dm = PromptDataModule(train_path=train, val_path=val, tokenizer=tiny_model_dir, batch_size=4)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    assert next(iter(dm.val_dataloader())).prompts == ["5+5=", "6+6="]


def test_missing_prompt_column_lists_the_columns(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1=", "id": 1}] * 2)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt'\].*\['question', 'id'\]"):
        _dm(path, tiny_model_dir).setup("fit")
    dm = _dm(path, tiny_model_dir, prompt_column="question")
    dm.setup("fit")
    assert dm.train_set[0]["prompt"] == "1+1="


def test_messages_render_with_the_plain_template_generation_prompt(
    tmp_path, tiny_model_dir, tokenizer
):
    msgs = [{"role": "user", "content": "hi"}]
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": msgs}] * 2)
    dm = _dm(path, tiny_model_dir)
    dm.setup("fit")
    ex = dm.train_set[0]
    assert ex["prompt"] == "user: hi\nassistant: "
    assert ex["prompt_ids"] == encode_prompt(tokenizer, "user: hi\nassistant: ", templated=True)
    assert tokenizer.eos_token_id not in ex["prompt_ids"]


def test_train_batches_are_left_padded(tmp_path, tiny_model_dir, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+2="}, {"prompt": "rev abc="}])
    dm = _dm(path, tiny_model_dir, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch.input_ids[:, -1] == encode_prompt(tokenizer, "=")[-1]).all()
    short = batch.prompts.index("1+2=")
    assert batch.attention_mask[short].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_prompt_until_cuts_hh_dialogues_at_the_last_marker(tmp_path, tiny_model_dir):
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: and?\n\nAssistant: sure"},
        {"chosen": "no marker here"},
    ] * 2
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PromptDataModule(
        train_path=str(path), val_path=None, val_fraction=0.0, tokenizer=tiny_model_dir,
        prompt_column="chosen", prompt_until="\n\nAssistant:", batch_size=1,
    )  # fmt: skip
    dm.setup("fit")
    assert [e["prompt"] for e in dm.train_set] == [
        "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: and?\n\nAssistant:"
    ] * 2
