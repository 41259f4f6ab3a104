"""Training rows: chat and alpaca shapes, assistant-only labels, unusable rows reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from welip.models import resolve_model_path
from welip.training import IGNORE_INDEX, load_tokenizer, load_training_data, to_messages, tokenize_chat


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))


def _learned(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    return str(
        tokenizer.decode([t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX])
    )


def test_only_assistant_turns_are_learned(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is WeLIP?"},
        {"role": "assistant", "content": "A Ray platform."},
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": "It serves models."},
    ]
    example = tokenize_chat(tokenizer, to_messages({"messages": messages}), max_seq_len=512)
    assert _learned(tokenizer, example.input_ids, example.labels) == (
        "A Ray platform.<|im_end|>\nIt serves models.<|im_end|>\n"
    )
    rendered = tokenizer.decode(example.input_ids)
    assert "Be brief." in rendered and "What is WeLIP?" in rendered  # context, not learned


def test_alpaca_rows_become_a_user_turn_and_an_answer(tokenizer: Any) -> None:
    row = {"instruction": "Answer.", "input": "What is 2+2?", "output": "4", "system": "Be exact."}
    messages = to_messages(row)
    assert messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Answer.\n\nWhat is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    example = tokenize_chat(tokenizer, messages, max_seq_len=512)
    assert _learned(tokenizer, example.input_ids, example.labels) == "4<|im_end|>\n"


def test_long_examples_are_cut_and_an_example_with_no_answer_left_is_refused(tokenizer: Any) -> None:
    messages = to_messages({"instruction": "word " * 100, "output": "yes"})
    assert len(tokenize_chat(tokenizer, messages, max_seq_len=200).input_ids) <= 200
    with pytest.raises(ValueError, match="no assistant token left within max_seq_len=50"):
        tokenize_chat(tokenizer, messages, max_seq_len=50)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant message"),
        ({"prompt": "x"}, "alpaca row needs"),
    ],
)
def test_malformed_rows_say_what_is_wrong(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_messages(row)


def test_unusable_rows_are_reported_by_row_and_id_and_the_rest_is_kept(
    tokenizer: Any, tmp_path: Path
) -> None:
    good = {
        "id": "a",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"id": "b", "messages": [{"role": "user", "content": "q"}]}),
        json.dumps({**good, "id": "a"}),
        json.dumps({"id": "c", "instruction": "Say yes.", "output": "yes"}),
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = load_training_data(str(path), tokenizer, fmt="auto", max_seq_len=128)
    assert len(data.examples) == 2
    assert [(m.row, m.id) for m in data.malformed] == [(1, None), (2, "b"), (3, "a")]
    assert "no assistant message" in data.malformed[1].error
    assert len(data.sha256) == 64


def test_a_dataset_with_no_usable_row_or_no_file_fails_before_training(
    tokenizer: Any, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="no usable training row; first problem: an alpaca row needs"):
        load_training_data(str(path), tokenizer, fmt="auto", max_seq_len=128)
    with pytest.raises(FileNotFoundError):
        load_training_data(str(tmp_path / "missing.jsonl"), tokenizer, fmt="auto", max_seq_len=128)


def test_the_shipped_training_data_is_fully_usable(tokenizer: Any) -> None:
    repo = Path(__file__).resolve().parents[3]
    for name in ("welip_faq.jsonl", "welip_faq_alpaca.jsonl"):
        data = load_training_data(
            str(repo / "data" / "finetune" / name), tokenizer, fmt="auto", max_seq_len=256
        )
        assert data.malformed == [] and len(data.examples) >= 12
