"""Alignment data: VeRL-shaped rows in, TRL's dataset rows and VeRL's parquet out.

A row is VeRL's: a chat ``prompt`` (or a string), a ``data_source`` and the answer in
``reward_model.ground_truth`` (or a top-level ``ground_truth``). Bad rows are reported
by row and id and never stop a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from welip.evaluation import Document, Malformed, load_dataset
from welip.store import write_bytes
from welip.training._data import chat_messages


@dataclass(frozen=True)
class Prompt:
    """One RL row: the chat prompt, where it came from, and the answer the reward compares with."""

    row: int
    id: str
    prompt: list[dict[str, str]]
    data_source: str
    ground_truth: str


@dataclass(frozen=True)
class AlignData:
    """Usable prompts, the rows that could not be used, and the file's digest."""

    prompts: list[Prompt]
    malformed: list[Malformed]
    sha256: str


def to_prompt(doc: Document, default_source: str) -> Prompt:
    """A dataset row as a :class:`Prompt`.

    ``prompt`` is a chat list (``[{"role", "content"}, ...]``) or a string (one user
    message); the answer is ``reward_model.ground_truth`` or a top-level ``ground_truth``
    (a non-string answer becomes its JSON); ``data_source`` defaults to ``default_source``.

    Raises:
        ValueError: no usable prompt or answer.
    """
    row = doc.doc
    raw = row.get("prompt")
    if isinstance(raw, str):
        if not raw.strip():
            raise ValueError("`prompt` is empty")
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        messages = chat_messages(raw, "prompt message")
        if messages[-1]["role"] == "assistant":
            raise ValueError("the prompt ends with an assistant message: nothing left to generate")
    else:
        raise ValueError("`prompt` must be a non-empty string or list of chat messages")
    reward_model = row.get("reward_model")
    if reward_model is not None and not isinstance(reward_model, dict):
        raise ValueError("`reward_model` must be an object with `ground_truth`")
    truth = (reward_model or {}).get("ground_truth", row.get("ground_truth"))
    if truth is None or truth == "":
        raise ValueError("no answer: set `reward_model.ground_truth` (or `ground_truth`)")
    source = row.get("data_source", default_source)
    if not isinstance(source, str) or not source:
        raise ValueError("`data_source` must be a non-empty string")
    answer = truth if isinstance(truth, str) else json.dumps(truth, ensure_ascii=False)
    return Prompt(doc.row, doc.id, messages, source, answer)


def load_align_data(path: str, *, tokenizer: Any = None, max_prompt_len: int | None = None) -> AlignData:
    """Read ``path`` (local or ``s3://``, jsonl, csv or parquet) into prompts.

    Rows that do not parse or convert, and prompts longer than ``max_prompt_len`` tokens
    once rendered with ``tokenizer``'s chat template, are reported as :class:`Malformed`
    with their row number and id; they never stop the run.

    Raises:
        ValueError: no row is usable.
    """
    dataset = load_dataset(path)
    default_source = Path(path.rstrip("/")).stem
    prompts: list[Prompt] = []
    malformed = list(dataset.malformed)
    for doc in dataset.documents:
        try:
            prompt = to_prompt(doc, default_source)
            if tokenizer is not None and max_prompt_len is not None:
                n = prompt_tokens(tokenizer, prompt.prompt)
                if n > max_prompt_len:
                    raise ValueError(f"the prompt has {n} tokens, more than max_prompt_len={max_prompt_len}")
        except ValueError as exc:
            malformed.append(Malformed(doc.row, doc.id, str(exc)))
            continue
        prompts.append(prompt)
    if not prompts:
        first = f"; first problem: {malformed[0].error}" if malformed else ""
        raise ValueError(f"{path}: no usable prompt row{first}")
    return AlignData(prompts, sorted(malformed, key=lambda m: m.row), dataset.sha256)


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of ``messages`` rendered with the chat template and the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def trl_rows(prompts: list[Prompt]) -> list[dict[str, Any]]:
    """Rows of TRL's dataset: ``prompt`` plus the columns the reward function receives."""
    return [
        {"prompt": p.prompt, "ground_truth": p.ground_truth, "data_source": p.data_source} for p in prompts
    ]


def verl_rows(prompts: list[Prompt]) -> list[dict[str, Any]]:
    """Rows of VeRL's parquet: ``prompt``, ``data_source``, ``reward_model``, ``extra_info``."""
    return [
        {
            "prompt": p.prompt,
            "data_source": p.data_source,
            "reward_model": {"style": "rule", "ground_truth": p.ground_truth},
            "extra_info": {"index": p.row, "id": p.id},
        }
        for p in prompts
    ]


def write_parquet(rows: list[dict[str, Any]], url: str) -> None:
    """Write ``rows`` as one parquet file at ``url`` (local path or ``s3://``)."""
    import io

    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    if not url.startswith("s3://"):
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    write_bytes(url, buffer.getvalue())
