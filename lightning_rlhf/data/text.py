"""Rows to (prompt, completion) text, and text to token ids: the one tokenisation of every stage."""

from __future__ import annotations

from typing import Any

# Used for tokenizers that ship no chat template. Renders "user: hi\nassistant: hello\n".
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def check_messages(messages: Any) -> None:
    """A conversation must be a list of {"role": text, "content": text}; say what is not."""
    if not isinstance(messages, list):
        raise ValueError(
            f"a conversation must be a list of messages, got {type(messages).__name__}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} must be an object, got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise ValueError(f"message {i} needs text '{key}', got {m.get(key)!r:.40}")


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> str:
    """A conversation as text, with the tokenizer's chat template or the plain fallback."""
    check_messages(messages)
    template = getattr(tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def without_final_answers(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation less its trailing assistant turn(s): what an RL prompt may show.

    A conversation taken from SFT or preference data often ends with the answer; rendered as a
    prompt with the generation prompt, the policy would be asked to answer after the answer.
    """
    end = len(messages)
    while end and messages[end - 1].get("role") == "assistant":
        end -= 1
    return messages[:end]


def split_conversation(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, str]:
    """Render a conversation with the tokenizer's chat template (or the plain fallback).

    Returns (prompt, completion): everything before the final assistant turn, rendered with the
    generation prompt, and the rest. The completion is found as a text suffix, not by template
    markers, so the loss mask is right for any template; a template under which the prompt is not a
    prefix of the whole conversation is refused.
    """
    check_messages(messages)
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("conversation has no final assistant turn to learn from")
    prompt = render_chat(tokenizer, messages[:-1], add_generation_prompt=True)
    full = render_chat(tokenizer, messages)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the prompt differently inside the conversation")
    return prompt, full[len(prompt) :]


def check_encoded(tokenizer: Any, text: str, ids: list[int]) -> None:
    """Refuse a non-blank text encoded to no tokens of its own (BOS and EOS aside).

    A tokenizer whose files do not match its class can encode every text to ``[]``; training on
    that gives a loss of 0 or an opaque shape error, so it is named here instead.
    """
    own = [t for t in ids if t not in (tokenizer.bos_token_id, tokenizer.eos_token_id)]
    specials = (tokenizer.bos_token, tokenizer.eos_token)  # a text of those alone encodes to them
    if not own and text.strip() and not any(t and t in text for t in specials):
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} of '{tokenizer.name_or_path}' encodes the "
            f"text {text!r:.40} to no tokens: its files do not match its class (check "
            "tokenizer.json and tokenizer_class in tokenizer_config.json), or give data.tokenizer "
            "a directory whose tokenizer works"
        )


def encode_prompt(tokenizer: Any, prompt: str, templated: bool = False) -> list[int]:
    """Prompt ids with the tokenizer's leading specials (BOS) and never a trailing EOS.

    A chat-templated prompt already holds its special tokens as text. A non-blank prompt that
    encodes to no tokens is refused (:func:`check_encoded`).
    """
    ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    check_encoded(tokenizer, prompt, ids)
    if ids and ids[-1] == tokenizer.eos_token_id and not templated:
        ids = ids[:-1]  # T5-style tokenizers append EOS to every text
    return ids


def encode_completion(tokenizer: Any, completion: str) -> list[int]:
    """Completion ids ending in exactly one EOS, so the model learns to stop; a non-blank
    completion that encodes to no tokens is refused (:func:`check_encoded`)."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    check_encoded(tokenizer, completion, ids)
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def fit_to_length(
    prompt: list[int], completion: list[int], max_length: int
) -> tuple[list[int], list[int]] | None:
    """Truncation policy: cut the prompt's left side (its end is what the answer follows).

    Keeps at least one prompt token; cuts the completion's end only when the completion alone is
    longer than ``max_length - 1``. Returns None when there is nothing left to learn from.
    """
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    completion = completion[: max_length - 1]
    prompt = prompt[len(prompt) - (max_length - len(completion)) :]
    return (prompt, completion) if prompt and completion else None
