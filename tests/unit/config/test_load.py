"""The one YAML loader every job and config reads through."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from welip.config import StrictModel, apply_overrides, load_config


class _Target(StrictModel):
    url: str = "http://127.0.0.1:8000/v1"
    max_concurrency: int = Field(8, ge=1)


class _Suite(StrictModel):
    name: str
    limit: int | None = None
    tags: list[str] = Field(default_factory=list)
    target: _Target = Field(default_factory=_Target)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_overrides_are_yaml_values_and_reach_into_sections(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: arithmetic\ntarget:\n  url: http://x/v1\n")
    suite = load_config(_Suite, path, ["limit=10", "tags=[a, b]", "target.max_concurrency=4"])
    assert suite.limit == 10
    assert suite.tags == ["a", "b"]
    assert suite.target == _Target(url="http://x/v1", max_concurrency=4)


def test_a_missing_section_is_created_and_null_clears() -> None:
    data = apply_overrides({"limit": 5}, ["target.url=http://y/v1", "limit=null"])
    assert data == {"limit": None, "target": {"url": "http://y/v1"}}


@pytest.mark.parametrize("override", ["limit", "=3", "target..url=x", " =1"])
def test_malformed_overrides_are_refused(tmp_path: Path, override: str) -> None:
    path = _write(tmp_path, "name: a\n")
    with pytest.raises(ValueError, match="is not key=value"):
        load_config(_Suite, path, [override])


def test_a_dotted_key_through_a_value_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\n")
    with pytest.raises(ValueError, match="'name' is not a section"):
        load_config(_Suite, path, ["name.first=x"])


def test_unknown_keys_and_bad_values_fail_validation(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\n")
    with pytest.raises(ValidationError, match="lmit"):
        load_config(_Suite, path, ["lmit=3"])
    with pytest.raises(ValidationError, match="max_concurrency"):
        load_config(_Suite, path, ["target.max_concurrency=0"])


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a config is a mapping"):
        load_config(_Suite, _write(tmp_path, "- a\n- b\n"), [])


def test_configs_are_frozen() -> None:
    suite = _Suite(name="a")
    with pytest.raises(ValidationError):
        suite.limit = 3  # type: ignore[misc]
