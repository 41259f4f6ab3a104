"""Suite configs: shipped suites, clear errors, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from welip.config import load_config
from welip.evaluation import Prompter, SuiteConfig, load_dataset

REPO_ROOT = Path(__file__).resolve().parents[3]
SUITES = sorted((REPO_ROOT / "configs" / "eval").glob("*.yaml"))


def suite(**changes: object) -> dict:
    base = {
        "task": "t",
        "dataset_path": "d.jsonl",
        "doc_to_text": "{{ q }}",
        "doc_to_target": "{{ a }}",
        "metric_list": [{"metric": "exact_match"}],
        "target": {"model": "m"},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_shipped_suite_renders_every_row(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # dataset paths are relative to the repository root
    cfg = load_config(SuiteConfig, path)
    dataset = load_dataset(cfg.dataset_path, cfg.dataset_format, id_field=cfg.id_field)
    samples, bad = Prompter(cfg, dataset.documents).samples(dataset.documents)
    assert dataset.malformed == [] and bad == []
    assert len(samples) >= 30, "each shipped suite has at least 30 items"


def test_shipped_suites_cover_the_promised_kinds() -> None:
    loaded = [load_config(SuiteConfig, p) for p in SUITES]
    metrics = {m.metric for cfg in loaded for m in cfg.metric_list}
    assert {"numeric_match", "json_schema", "judge", "acc", "token_f1"} <= metrics
    langs = {yaml.safe_load(line)["lang"] for line in (REPO_ROOT / "data/eval/factual_qa.jsonl").open()}
    assert langs == {"en", "ko"}


def test_unknown_metric_and_option_are_named() -> None:
    with pytest.raises(ValidationError, match="unknown metric 'exact'"):
        SuiteConfig.model_validate(suite(metric_list=[{"metric": "exact"}]))
    with pytest.raises(ValidationError, match="has no option ignore_cas"):
        SuiteConfig.model_validate(
            suite(metric_list=[{"metric": "exact_match", "kwargs": {"ignore_cas": 1}}])
        )
    with pytest.raises(ValidationError, match="Extra inputs"):
        SuiteConfig.model_validate(suite(doc_to_txt="x"))


def test_judge_needs_outputs_and_pairwise_needs_baseline() -> None:
    judge = {"instructions": "Grade {{ inputs }}", "target": {"model": "j"}}
    with pytest.raises(ValidationError, match="must use outputs"):
        SuiteConfig.model_validate(suite(metric_list=[{"metric": "judge", "judge": judge}]))
    pairwise = {
        "instructions": "{{ output_a }} vs {{ output_b }}",
        "pairwise": True,
        "feedback_type": "category",
        "target": {"model": "j"},
    }
    with pytest.raises(ValidationError, match="needs `baseline`"):
        SuiteConfig.model_validate(suite(metric_list=[{"metric": "judge", "judge": pairwise}]))
    ok = {**pairwise, "baseline": "{{ ref }}"}
    assert SuiteConfig.model_validate(suite(metric_list=[{"metric": "judge", "judge": ok}]))


def test_multiple_choice_needs_an_endpoint_and_choices() -> None:
    mc = {"output_type": "multiple_choice", "metric_list": [{"metric": "acc"}]}
    with pytest.raises(ValidationError, match="needs doc_to_choice"):
        SuiteConfig.model_validate(suite(**mc))
    batch = {"kind": "batch", "model": "m", "source": "smollm2-135m-instruct"}
    with pytest.raises(ValidationError, match="use an endpoint target"):
        SuiteConfig.model_validate(suite(**mc, doc_to_choice="choices", target=batch))
    with pytest.raises(ValidationError, match="needs output_type multiple_choice"):
        SuiteConfig.model_validate(suite(metric_list=[{"metric": "acc"}]))


def test_overrides_are_dotted_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite()))
    cfg = load_config(
        SuiteConfig, path, ["limit=5", "target.max_concurrency=3", "generation_kwargs.stop=[x, y]"]
    )
    assert cfg.limit == 5 and cfg.target.max_concurrency == 3
    assert cfg.generation_kwargs.stop == ["x", "y"]
    batch = load_config(SuiteConfig, path, ["target={kind: batch, model: m, source: s}"])
    assert batch.target.kind == "batch"
    with pytest.raises(ValueError, match="not key=value"):
        load_config(SuiteConfig, path, ["limit"])
    with pytest.raises(ValidationError):
        load_config(SuiteConfig, path, ["target.max_concurrency=0"])
