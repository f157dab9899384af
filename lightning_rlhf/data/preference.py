"""PreferenceDataModule: (prompt, chosen, rejected) pairs for reward models (and DPO)."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from functools import partial
from typing import Any

from torch.utils.data import DataLoader

from lightning_rlhf.data.base import TextDataModule
from lightning_rlhf.data.collate import collate_preferences, collate_prompts
from lightning_rlhf.data.load import require_columns
from lightning_rlhf.data.text import encode_completion, encode_prompt, split_conversation

log = logging.getLogger(__name__)


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Full texts sharing a prompt (Anthropic-HH style) -> (prompt, chosen, rejected).

    The prompt is the longest common prefix, cut back to a word boundary so that neither response
    starts mid-word.
    """
    n = len(os.path.commonprefix([chosen, rejected]))
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _render_messages(chosen: list[dict], rejected: list[dict], tokenizer) -> tuple[str, str, str]:
    """Conversations sharing all turns but the last -> (templated prompt, chosen, rejected)."""
    prompt, chosen_text = split_conversation(chosen, tokenizer)
    rejected_prompt, rejected_text = split_conversation(rejected, tokenizer)
    if rejected_prompt != prompt:
        raise ValueError("chosen and rejected conversations do not share their prompt turns")
    return prompt, chosen_text, rejected_text


def fit_pair(prompt: list[int], response: list[int], max_length: int) -> list[int]:
    """Truncation for scoring: keep the end of the response (where the score is read), then as
    much of the prompt's end as fits."""
    response = response[-(max_length - 1) :]
    room = max_length - len(response)
    return (prompt[-room:] if room > 0 else []) + response


def _fitted(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], int]:
    """``fit_pair``'s ids and how many of them, at the end, are the response's."""
    return fit_pair(prompt, response, max_length), min(len(response), max_length - 1)


class PreferenceDataModule(TextDataModule):
    """Preference pairs: a prompt, a preferred (chosen) and a dispreferred (rejected) response.

    Formats: explicit ``prompt``/``chosen``/``rejected`` columns; ``chosen``/``rejected`` full texts
    that share their prompt (Anthropic-HH; no prompt column); or ``chosen``/``rejected`` as lists of
    messages rendered with the chat template. Pairs whose responses are identical or empty, or
    become identical once cut to ``max_length``, are dropped and counted; when most pairs become
    identical that way, the data is refused.

    Args:
        train_path: the training pairs (a file, directory or hub dataset).
        val_path: the validation pairs; None holds out ``val_fraction`` of the training rows.
        tokenizer: the model directory or hub name whose tokenizer is used.
        prompt_column: column holding the prompt; when the data has no such column the prompt is
            the shared prefix of chosen and rejected.
        chosen_column: column holding the preferred response (text or messages).
        rejected_column: column holding the other response.
        margin_column: optional column of required reward margins per pair.
        max_length: longest tokenised prompt + response; longer ones keep the end of the response
            (where the score is read) and what fits of the prompt's end. Pairs that this makes
            token-identical are dropped and counted; most of them: the data is refused.
        num_val_prompts: prompts of the first validation pairs served as a second validation
            loader, for a policy to answer (the DPO stage's oracle score); 0 serves the pairs
            alone, as the reward stage expects.
        **kwargs: the options every data module has (:class:`TextDataModule`): ``train_split``,
            ``val_split``, ``subset``, ``val_fraction``, ``batch_size`` (pairs),
            ``pad_to_multiple_of``, ``num_workers``, ``seed``, ``trust_remote_code``.
    """

    def __init__(
        self,
        train_path: str = "artifacts/task/pref_train.jsonl",
        val_path: str | None = "artifacts/task/pref_val.jsonl",
        tokenizer: str = "artifacts/sft",
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        margin_column: str | None = None,
        max_length: int = 128,
        num_val_prompts: int = 0,
        **kwargs: Any,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"data.max_length must be at least 2, got {max_length}")
        if num_val_prompts < 0:
            raise ValueError(f"data.num_val_prompts must be >= 0, got {num_val_prompts}")
        super().__init__(train_path, val_path, tokenizer, **kwargs)

    def _texts(self, row: dict, has_prompt: bool) -> tuple[str, str, str]:
        hp = self.hparams
        chosen, rejected = row[hp.chosen_column], row[hp.rejected_column]
        if isinstance(chosen, list):
            return _render_messages(chosen, rejected, self.tokenizer)
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ValueError(
                f"'{hp.chosen_column}'/'{hp.rejected_column}' must be text or messages"
            )
        if has_prompt:
            prompt = row[hp.prompt_column]
            if not isinstance(prompt, str):
                raise ValueError(
                    f"'{hp.prompt_column}' must be text, got {type(prompt).__name__} {prompt!r:.40}"
                )
            return prompt, chosen, rejected
        return split_shared_prefix(chosen, rejected)

    def _margin(self, row: dict) -> float:
        column = self.hparams.margin_column
        if column is None:
            return 0.0
        value = row[column]
        try:
            margin = float(value)
        except (TypeError, ValueError):
            margin = float("nan")
        if isinstance(value, bool) or not math.isfinite(margin):
            raise ValueError(f"margin column '{column}' must be a finite number, got {value!r:.40}")
        return margin

    def _pair(self, row: dict, where: str, has_prompt: bool, index: int) -> dict | str:
        """``row`` encoded as the ``index``-th pair, or why it is dropped; a row that cannot be
        read raises a ValueError naming ``where``."""
        hp = self.hparams
        try:
            prompt, chosen, rejected = self._texts(row, has_prompt)
            margin = self._margin(row)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not chosen.strip() or not rejected.strip():
            return "empty response"
        if chosen == rejected:
            return "identical chosen and rejected"
        templated = isinstance(row[hp.chosen_column], list)
        try:
            p_ids = encode_prompt(self.tokenizer, prompt, templated)
            chosen_ids = encode_completion(self.tokenizer, chosen)
            rejected_ids = encode_completion(self.tokenizer, rejected)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        chosen_ids, chosen_len = _fitted(p_ids, chosen_ids, hp.max_length)
        rejected_ids, rejected_len = _fitted(p_ids, rejected_ids, hp.max_length)
        if chosen_ids == rejected_ids:  # they differed only in what the cut removed
            return f"identical once cut to max_length {hp.max_length}"
        return {
            "chosen_ids": chosen_ids,
            "rejected_ids": rejected_ids,
            "chosen_response_len": chosen_len,
            "rejected_response_len": rejected_len,
            "prompt_ids": p_ids[-hp.max_length :],
            "index": index,
            "margin": margin,
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
        }

    def _encode(self, ds, source: str) -> list[dict]:
        hp = self.hparams
        needed = [hp.chosen_column, hp.rejected_column] + (
            [hp.margin_column] if hp.margin_column else []
        )
        require_columns(ds, needed, source)
        has_prompt = hp.prompt_column in ds.column_names
        if not has_prompt and len(ds) and isinstance(ds[0][hp.chosen_column], str):
            log.warning(
                "%s: no '%s' column: each pair's prompt is taken as the shared beginning of "
                "'%s' and '%s' (HH-style full texts); set data.prompt_column if it has another name",
                source, hp.prompt_column, hp.chosen_column, hp.rejected_column,
            )  # fmt: skip
        out, skipped = [], Counter()
        for i, row in enumerate(ds):
            pair = self._pair(row, f"{source} row {i}", has_prompt, index=len(out))
            if isinstance(pair, str):
                skipped[pair] += 1
            else:
                out.append(pair)
        for why, n in skipped.items():
            log.warning("%s: dropped %d pairs (%s)", source, n, why)
        ties = skipped[f"identical once cut to max_length {hp.max_length}"]
        if ties > len(out):  # most pairs: a loss at ln 2 that learns nothing
            raise ValueError(
                f"{source}: {ties} of {ties + len(out)} pairs become token-identical once cut to "
                f"max_length {hp.max_length} (a long response keeps its end, and they differ "
                "earlier): raise data.max_length, or shorten the responses"
            )
        if not out:
            raise ValueError(f"{source}: no usable pairs among {len(ds)} rows ({dict(skipped)})")
        return out

    def _collate(self) -> partial:
        return self.collate(collate_preferences)

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.train_set, self._collate())

    def val_dataloader(self) -> DataLoader | list:
        """The pairs; with ``num_val_prompts``, a second loader of their prompts, left-padded."""
        if not self.val_set:
            return []
        loader = self.loader
        pairs = DataLoader(
            self.val_set,
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            collate_fn=self._collate(),
        )
        if not self.hparams.num_val_prompts:
            return pairs
        prompts = DataLoader(
            self.val_set[: self.hparams.num_val_prompts],
            batch_size=max(loader.batch_size, 128),
            collate_fn=self.collate(collate_prompts),
        )
        return [pairs, prompts]
