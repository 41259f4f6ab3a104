"""Datasets and prompts: formats, S3, malformed rows reported by row and id, few-shot."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pandas as pd
import pytest

from welip.evaluation import Prompter, SuiteConfig, load_dataset, template_hash


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def cfg(**changes: object) -> SuiteConfig:
    base = {
        "task": "t",
        "dataset_path": "unused.jsonl",
        "doc_to_text": "Q: {{ q }}",
        "doc_to_target": "{{ a }}",
        "metric_list": [{"metric": "exact_match"}],
        "target": {"model": "m"},
    }
    base.update(changes)
    return SuiteConfig.model_validate(base)


def test_malformed_rows_are_counted_with_their_row_and_id(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            '{"id": "a", "q": "1+1", "a": "2"}',
            '{"id": "b", "q": "broken',
            "",
            "[1, 2]",
            '{"id": "a", "q": "again", "a": "x"}',
            '{"id": "c", "a": "no question"}',
            '{"id": "d", "q": "2+2", "a": "4"}',
        ],
    )
    dataset = load_dataset(path)
    assert [d.id for d in dataset.documents] == ["a", "c", "d"]
    assert [(m.row, m.id) for m in dataset.malformed] == [(1, None), (3, None), (4, "a")]
    assert "invalid JSON" in dataset.malformed[0].error and "duplicate id" in dataset.malformed[2].error
    samples, bad = Prompter(cfg(), dataset.documents).samples(dataset.documents)
    assert [s["id"] for s in samples] == ["a", "d"]
    assert [(m.row, m.id) for m in bad] == [(5, "c")] and "'q' is undefined" in bad[0].error


def test_csv_parquet_and_s3_read_the_same_rows(tmp_path: Path, s3_endpoint: str) -> None:
    rows = [{"id": "r1", "q": "x", "a": "1"}, {"id": "r2", "q": "y", "a": "2"}]
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="evals")
    s3.put_object(
        Bucket="evals", Key="suite/d.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode()
    )
    for source in (str(tmp_path / "d.csv"), str(tmp_path / "d.parquet"), "s3://evals/suite/d.jsonl"):
        dataset = load_dataset(source)
        assert [(d.id, d.doc["q"], str(d.doc["a"])) for d in dataset.documents] == [
            ("r1", "x", "1"),
            ("r2", "y", "2"),
        ]


def test_missing_file_and_unknown_suffix_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "absent.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="set dataset_format"):
        load_dataset(str(tmp_path / "d.txt"))


def test_fewshot_is_seeded_and_never_the_row_itself(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [json.dumps({"id": str(i), "q": f"q{i}", "a": f"a{i}"}) for i in range(6)]
    )
    docs = load_dataset(path).documents
    suite = cfg(num_fewshot=3)
    first = Prompter(suite, docs).sample(docs[0])
    again = Prompter(suite, docs).sample(docs[0])
    assert first == again
    messages = first["messages"]
    assert len(messages) == 7 and messages[-1] == {"role": "user", "content": "Q: q0"}
    assert [m["role"] for m in messages[:6]] == ["user", "assistant"] * 3
    assert "Q: q0" not in [m["content"] for m in messages[:6]]
    text = Prompter(cfg(num_fewshot=2, mode="completion"), docs).sample(docs[1])["prompt"]
    assert text.endswith("Q: q1") and text.count("\n\n") == 2
    assert template_hash(suite) != template_hash(cfg(num_fewshot=2))


def test_multiple_choice_sample_has_continuations_and_gold(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [json.dumps({"id": "1", "q": "Capital of France?", "c": ["Rome", "Paris"], "g": 1})],
    )
    suite = cfg(
        output_type="multiple_choice",
        doc_to_choice="{{ c }}",
        doc_to_target="{{ g }}",
        metric_list=[{"metric": "acc"}],
    )
    docs = load_dataset(path).documents
    sample = Prompter(suite, docs).sample(docs[0])
    assert sample["context"] == "Q: Capital of France?"
    assert sample["continuations"] == [" Rome", " Paris"] and sample["gold"] == 1
    by_name = cfg(
        output_type="multiple_choice",
        doc_to_choice="c",
        doc_to_target="Paris",
        metric_list=[{"metric": "acc"}],
    )
    assert Prompter(by_name, docs).sample(docs[0])["gold"] == 1
    bad = cfg(
        output_type="multiple_choice",
        doc_to_choice="c",
        doc_to_target="Lyon",
        metric_list=[{"metric": "acc"}],
    )
    _, malformed = Prompter(bad, docs).samples(docs)
    assert "not one of the choices" in malformed[0].error
