"""Training data: chat ``messages`` or alpaca rows, rendered with the model's chat template.

Only assistant tokens carry a label; system and user tokens are context (label -100),
as in TRL's ``assistant_only_loss`` and LLaMA-Factory's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from welip.evaluation import Malformed, load_dataset

IGNORE_INDEX = -100
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One tokenized conversation."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TrainingData:
    """Tokenized examples, the rows that could not be used, and the file's digest."""

    examples: list[Example]
    malformed: list[Malformed]
    sha256: str


def to_messages(row: dict[str, Any], fmt: str = "auto") -> list[dict[str, str]]:
    """A row as chat messages.

    ``messages`` rows pass through (checked); alpaca rows become an optional system
    message, a user message (``instruction``, then ``input`` after a blank line) and
    the assistant's ``output``.

    Raises:
        ValueError: the row has neither shape, or a message is malformed.
    """
    if fmt == "messages" or (fmt == "auto" and "messages" in row):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("`messages` must be a non-empty list")
        out = chat_messages(messages, "message")
    else:
        instruction, output = row.get("instruction"), row.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str):
            raise ValueError("an alpaca row needs string `instruction` and `output` (or use `messages`)")
        extra = row.get("input") or ""
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        out = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        if isinstance(row.get("system"), str) and row["system"]:
            out.insert(0, {"role": "system", "content": row["system"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("the conversation has no assistant message to learn")
    return out


def chat_messages(raw: list[Any], label: str) -> list[dict[str, str]]:
    """``raw`` checked as chat messages (``role`` system/user/assistant, string ``content``).

    Raises:
        ValueError: naming the first bad message as ``<label> <index>``.
    """
    out = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ValueError(f"{label} {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise ValueError(f"{label} {i}: role must be one of {', '.join(_ROLES)}, not {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{label} {i}: content must be a string")
        out.append({"role": role, "content": content})
    return out


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]], max_seq_len: int) -> Example:
    """Render ``messages`` with the chat template; label the assistant turns only.

    Each assistant turn's tokens are found by rendering the conversation up to it with
    the generation prompt (the context) and through it (context + answer); the template
    must render conversations as prefixes of each other, which chat templates do.

    Raises:
        ValueError: the template does not render prefixes, or nothing trainable is left
        within ``max_seq_len``.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if through[: len(context)] != context or context[: len(input_ids)] != input_ids:
            raise ValueError("the chat template does not render the conversation as a prefix")
        labels += [IGNORE_INDEX] * (len(context) - len(input_ids)) + through[len(context) :]
        input_ids = through
    input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    example = Example(input_ids, labels)
    if example.trained_tokens == 0:
        raise ValueError(f"no assistant token left within max_seq_len={max_seq_len}")
    return example


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def load_training_data(path: str, tokenizer: Any, *, fmt: str, max_seq_len: int) -> TrainingData:
    """Read ``path`` (local or ``s3://``), convert and tokenize every row.

    Rows that do not parse or convert are reported as :class:`Malformed` with their row
    number and id; they never stop the run.

    Raises:
        ValueError: no row is usable.
    """
    dataset = load_dataset(path)
    examples: list[Example] = []
    malformed = list(dataset.malformed)
    for doc in dataset.documents:
        try:
            examples.append(tokenize_chat(tokenizer, to_messages(doc.doc, fmt), max_seq_len))
        except ValueError as exc:
            malformed.append(Malformed(doc.row, doc.id, str(exc)))
    if not examples:
        first = f"; first problem: {malformed[0].error}" if malformed else ""
        raise ValueError(f"{path}: no usable training row{first}")
    return TrainingData(examples, sorted(malformed, key=lambda m: m.row), dataset.sha256)
