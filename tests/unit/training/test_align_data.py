"""Align data: VeRL-shaped rows in, bad rows reported by row and id, TRL and VeRL rows out."""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from welip.evaluation import Document
from welip.training import load_align_data, trl_rows, verl_rows, write_parquet
from welip.training._align_data import to_prompt

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "data" / "align" / "arithmetic.jsonl"
QUESTION = re.compile(r"What is (\d+) ([+*-]) (\d+)\? Answer with the number only\.")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]


def doc(**fields: Any) -> Document:
    return Document(row=7, id="q7", doc=fields)


def test_verl_rows_keep_their_shape() -> None:
    prompt = to_prompt(
        doc(prompt=CHAT, data_source="math", reward_model={"style": "rule", "ground_truth": "5"}), "d"
    )
    assert (prompt.row, prompt.id, prompt.prompt, prompt.data_source, prompt.ground_truth) == (
        7,
        "q7",
        CHAT,
        "math",
        "5",
    )


def test_flat_rows_with_a_string_prompt_become_one_user_message() -> None:
    prompt = to_prompt(doc(prompt="What is 2 + 3?", ground_truth=5), "arithmetic")
    assert prompt.prompt == [{"role": "user", "content": "What is 2 + 3?"}]
    assert prompt.ground_truth == "5"  # numbers become their JSON text
    assert prompt.data_source == "arithmetic"  # the default: the file's stem


def test_structured_ground_truth_becomes_json() -> None:
    prompt = to_prompt(doc(prompt="Give JSON", reward_model={"ground_truth": {"a": [1, 2]}}), "d")
    assert json.loads(prompt.ground_truth) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ground_truth": "1"}, "`prompt` must be"),
        ({"prompt": "  ", "ground_truth": "1"}, "`prompt` is empty"),
        ({"prompt": [], "ground_truth": "1"}, "`prompt` must be"),
        ({"prompt": ["hi"], "ground_truth": "1"}, "message 0 is not an object"),
        ({"prompt": [{"role": "robot", "content": "x"}], "ground_truth": "1"}, "role must be one of"),
        ({"prompt": [{"role": "user", "content": 3}], "ground_truth": "1"}, "content must be a string"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "ground_truth": "1"}, "nothing left"),
        ({"prompt": "q"}, "no answer"),
        ({"prompt": "q", "reward_model": {"style": "rule"}}, "no answer"),
        ({"prompt": "q", "reward_model": "5"}, "`reward_model` must be an object"),
        ({"prompt": "q", "ground_truth": "1", "data_source": 3}, "`data_source` must be"),
    ],
)
def test_unusable_rows_say_why(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_prompt(doc(**fields), "d")


class _Tokenizer:
    """A chat template that joins contents, and one token per word."""

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        assert kwargs == {"tokenize": False, "add_generation_prompt": True}
        return " ".join(m["content"] for m in messages)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_bad_rows_are_reported_by_row_and_id_and_never_fatal(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "prompt": "What is 1 + 1?", "ground_truth": "2"}),
        "{not json",
        json.dumps({"id": "b", "prompt": "What is 2 + 2?"}),
        "",
        json.dumps({"id": "c", "prompt": "one two three four five six seven eight", "ground_truth": "8"}),
        json.dumps({"id": "a", "prompt": "again", "ground_truth": "1"}),
        json.dumps({"id": "d", "prompt": CHAT, "reward_model": {"ground_truth": "5"}, "data_source": "m"}),
    ]
    path = tmp_path / "rl.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_align_data(str(path), tokenizer=_Tokenizer(), max_prompt_len=7)
    assert [p.id for p in data.prompts] == ["a", "d"]
    assert [p.data_source for p in data.prompts] == ["rl", "m"]
    assert [(m.row, m.id) for m in data.malformed] == [(1, None), (2, "b"), (4, "c"), (5, "a")]
    assert "invalid JSON" in data.malformed[0].error
    assert "no answer" in data.malformed[1].error
    assert "8 tokens, more than max_prompt_len=7" in data.malformed[2].error
    assert "duplicate id" in data.malformed[3].error
    assert len(data.sha256) == 64


def test_a_file_without_one_usable_row_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(ValueError, match="no usable prompt row; first problem: no answer"):
        load_align_data(str(path))


def test_shipped_arithmetic_rows_are_usable_and_their_answers_right() -> None:
    data = load_align_data(str(SHIPPED))
    assert data.malformed == [] and 30 <= len(data.prompts) <= 60
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for prompt in data.prompts:
        assert prompt.data_source == "welip/arithmetic"
        (message,) = prompt.prompt
        match = QUESTION.fullmatch(message["content"])
        assert match, message["content"]
        a, op, b = match.groups()
        assert prompt.ground_truth == str(ops[op](int(a), int(b)))


def test_trl_rows_make_a_dataset_with_the_reward_columns() -> None:
    from datasets import Dataset

    rows = trl_rows(load_align_data(str(SHIPPED)).prompts)
    dataset = Dataset.from_list(rows)
    assert set(dataset.column_names) == {"prompt", "ground_truth", "data_source"}
    assert dataset[0]["prompt"][0]["role"] == "user"


def test_verl_parquet_has_the_columns_verl_reads(tmp_path: Path) -> None:
    prompts = load_align_data(str(SHIPPED)).prompts
    url = str(tmp_path / "out" / "data" / "train.parquet")
    write_parquet(verl_rows(prompts), url)
    frame = pd.read_parquet(url)
    assert list(frame.columns) == ["prompt", "data_source", "reward_model", "extra_info"]
    first = frame.iloc[0]
    assert [dict(m) for m in first["prompt"]] == prompts[0].prompt
    assert first["data_source"] == "welip/arithmetic"
    assert first["reward_model"]["ground_truth"] == prompts[0].ground_truth
    assert dict(first["extra_info"]) == {"index": prompts[0].row, "id": prompts[0].id}


def test_verl_parquet_goes_to_s3_storage(s3_endpoint: str) -> None:
    from welip.store import filesystem

    fs, _ = filesystem("s3://welip-align/x")
    fs.mkdir("welip-align")
    prompts = load_align_data(str(SHIPPED)).prompts[:3]
    write_parquet(verl_rows(prompts), "s3://welip-align/run/data/train.parquet")
    with fs.open("welip-align/run/data/train.parquet", "rb") as f:
        frame = pd.read_parquet(f)
    assert len(frame) == 3
