"""run_job: what a user of `python jobs/<verb>.py --config ... key=value` sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import Field

import welip.job
from welip.config import StrictModel
from welip.job import run_job


class _Config(StrictModel):
    name: str
    limit: int = Field(3, ge=1)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(welip.job, "connect_ray", lambda: None)  # no cluster in unit tests
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\n")
    return path


def test_the_summary_is_printed_as_json(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = []

    def main(cfg: _Config) -> dict[str, object]:
        seen.append(cfg)
        return {"name": cfg.name, "limit": cfg.limit}

    summary = run_job(main, _Config, component="demo", argv=["--config", str(config_file), "limit=7"])
    assert seen == [_Config(name="demo", limit=7)]
    # A trace id is added when this process traces (another test may have installed a provider).
    assert {k: v for k, v in summary.items() if k != "trace_id"} == {"name": "demo", "limit": 7}
    assert json.loads(capsys.readouterr().out) == summary


def test_the_run_is_one_root_span_and_its_trace_id_is_in_the_summary(
    config_file: Path, span_exporter: InMemorySpanExporter
) -> None:
    def main(cfg: _Config) -> dict[str, object]:
        trace.get_current_span().set_attribute("welip.demo.name", cfg.name)
        return {}

    summary = run_job(main, _Config, component="demo", argv=["--config", str(config_file)])
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "demo.run"]
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["openinference.span.kind"] == "CHAIN"
    assert span.attributes["welip.demo.name"] == "demo"
    assert summary["trace_id"] == format(span.context.trace_id, "032x")


def test_an_invalid_config_exits_2_naming_the_field(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_job(lambda cfg: {}, _Config, component="demo", argv=["--config", str(config_file), "limit=0"])
    assert exit_.value.code == 2
    assert "limit" in capsys.readouterr().err


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_job(lambda cfg: {}, _Config, component="demo", argv=["--config", str(tmp_path / "none.yaml")])
    assert exit_.value.code == 2
    assert "invalid config" in capsys.readouterr().err


def test_an_expected_error_exits_1_with_its_message(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def main(cfg: _Config) -> dict[str, object]:
        raise FileNotFoundError("no documents under /nowhere")

    with pytest.raises(SystemExit) as exit_:
        run_job(
            main, _Config, component="demo", errors=(FileNotFoundError,), argv=["--config", str(config_file)]
        )
    assert exit_.value.code == 1
    assert "error: no documents under /nowhere" in capsys.readouterr().err


def test_an_unexpected_error_is_raised(config_file: Path) -> None:
    def main(cfg: _Config) -> dict[str, object]:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run_job(main, _Config, component="demo", argv=["--config", str(config_file)])


def test_a_job_that_prints_its_own_report_prints_no_json(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def main(cfg: _Config) -> dict[str, object]:
        print("accuracy 0.75 over 24 samples")
        return {"accuracy": 0.75}

    summary = run_job(
        main, _Config, component="demo", print_summary=False, argv=["--config", str(config_file)]
    )
    assert summary["accuracy"] == 0.75
    assert capsys.readouterr().out == "accuracy 0.75 over 24 samples\n"
