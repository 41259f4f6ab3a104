"""The `welip` CLI against the embedded SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from welip.cli import app
from welip.store import AuditStore, Database, EvalRunRecord, EvalRunStore, KeyStore, hash_key


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("WELIP_DATABASE_URL", url)
    return url


def test_keys_create_prints_the_key_once_and_list_never_shows_it(database_url: str) -> None:
    runner = CliRunner()
    created = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--name",
            "ci",
            "--role",
            "user",
            "--models",
            "a, b",
            "--rpm",
            "5",
            "--expires",
            "2d",
        ],
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("wlp_")
    record = KeyStore(Database(database_url)).key_by_hash(hash_key(key))
    assert record is not None and record.models == ["a", "b"] and record.rpm == 5 and record.expires_at
    listed = runner.invoke(app, ["keys", "list"])
    assert key not in listed.stdout and json.loads(listed.stdout.splitlines()[0])["id"] == record.id
    assert runner.invoke(app, ["keys", "revoke", record.id]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", record.id]).exit_code == 1
    past = runner.invoke(app, ["keys", "create", "--name", "x", "--role", "user", "--expires", "2001-01-01"])
    assert past.exit_code == 2 and "in the past" in past.output


def test_audit_query_filters(database_url: str) -> None:
    db = Database(database_url)
    db.upgrade()
    base = {"principal_kind": "api_key", "method": "POST", "route": "/v1/completions", "latency_ms": 1.0}
    AuditStore(db).write_audit(
        [
            {
                **base,
                "id": "1",
                "ts": "2026-11-01T00:00:00+00:00",
                "request_id": "a",
                "principal": "k1",
                "status": 200,
            },
            {
                **base,
                "id": "2",
                "ts": "2026-11-02T00:00:00+00:00",
                "request_id": "b",
                "principal": "k2",
                "status": 429,
            },
        ]
    )
    out = CliRunner().invoke(app, ["audit", "query", "--status", "429"])
    assert [json.loads(line)["request_id"] for line in out.stdout.splitlines()] == ["b"]
    out = CliRunner().invoke(app, ["audit", "query", "--until", "2026-11-01T12:00:00"])
    assert [json.loads(line)["principal"] for line in out.stdout.splitlines()] == ["k1"]


def write_run(folder: Path, scores: list[float]) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": f"s{i}", "scores": {"em": v}}) for i, v in enumerate(scores)]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


def test_eval_compare_prints_difference_and_wins(tmp_path: Path, database_url: str) -> None:
    write_run(tmp_path / "a", [0, 0, 1, 1])
    write_run(tmp_path / "b", [1, 1, 1, 0])
    db = Database()
    db.upgrade()
    row = {"model": "m", "target_kind": "endpoint", "status": "finished", "seed": 1, "rows": 4}
    row.update(scored=4, errors=0, malformed=0, metrics={"em": 0.5}, task="t")
    EvalRunStore(db).record_eval_run(EvalRunRecord(**row, id="runa", results_url=str(tmp_path / "a")))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "compare", "runa", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    (cmp,) = json.loads(result.output)
    assert (cmp["metric"], cmp["diff"], cmp["wins"], cmp["losses"], cmp["ties"]) == ("em", 0.25, 2, 1, 1)
    table = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert "+0.2500" in table.output
    missing = runner.invoke(app, ["eval", "compare", "nosuchrun", str(tmp_path / "b")])
    assert missing.exit_code == 1 and "no eval run nosuchrun" in missing.output


def test_eval_job_spec_is_the_documented_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from welip.cli import eval_job_spec

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("WELIP_API_KEY", "wlp_k")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("WELIP_STORAGE_URL", raising=False)
    spec = eval_job_spec(Path("configs/eval/arithmetic.yaml"), ["limit=5"])
    assert spec["entrypoint"] == "python jobs/evaluate.py --config configs/eval/arithmetic.yaml limit=5"
    assert spec["runtime_env"]["working_dir"] == "."
    assert spec["runtime_env"]["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "WELIP_API_KEY": "wlp_k",
    }
    bad = CliRunner().invoke(app, ["eval", "run", "configs/eval/arithmetic.yaml", "limit=0"])
    assert bad.exit_code == 2 and "invalid suite" in bad.output


def test_training_jobs_are_submitted_with_their_commit_and_refused_when_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from welip.cli import job_spec

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("WELIP_GIT_COMMIT", "abc123")
    spec = job_spec("finetune.py", Path("configs/finetune/smollm2_faq.yaml"), ["max_steps=5"])
    assert (
        spec["entrypoint"] == "python jobs/finetune.py --config configs/finetune/smollm2_faq.yaml max_steps=5"
    )
    assert spec["runtime_env"]["env_vars"]["WELIP_GIT_COMMIT"] == "abc123"
    bad = CliRunner().invoke(app, ["finetune", "run", "configs/finetune/smollm2_faq.yaml", "lora_rnak=8"])
    assert bad.exit_code == 2 and "invalid config" in bad.output and "lora_rnak" in bad.output
    bad = CliRunner().invoke(
        app, ["align", "run", "configs/align/smollm2_arithmetic.yaml", "reward_metric=nope"]
    )
    assert bad.exit_code == 2 and "unknown reward_metric" in bad.output


def test_alias_set_and_a_promotion_refused_before_any_evaluation(database_url: str) -> None:
    runner = CliRunner()
    gate = str(Path(__file__).resolve().parents[2] / "configs/eval/arithmetic.yaml")
    refused = runner.invoke(
        app, ["promote", "faq-v2", "--alias", "prod", "--gate", gate, "--require", "em >= current"]
    )
    assert refused.exit_code == 2 and "error: alias prod does not exist yet" in refused.output
    malformed = runner.invoke(
        app, ["promote", "faq-v2", "--alias", "prod", "--gate", gate, "--require", "em"]
    )
    assert malformed.exit_code == 2 and "is not `METRIC OP current" in malformed.output
    created = runner.invoke(app, ["alias", "set", "prod", "faq-v1"])
    assert created.exit_code == 0, created.output
    row = json.loads(created.stdout)
    assert (row["alias"], row["target"], row["previous"]) == ("prod", "faq-v1", None)
    same = runner.invoke(
        app, ["promote", "faq-v1", "--alias", "prod", "--gate", gate, "--require", "em >= 0"]
    )
    assert same.exit_code == 2 and "error: prod already points at faq-v1" in same.output
    chained = runner.invoke(app, ["alias", "set", "staging", "prod"])
    assert (
        chained.exit_code == 2
        and "error: prod is itself an alias; point staging at a model" in chained.output
    )


def test_the_cli_loads_no_engine_code() -> None:
    """`welip keys create` is one database insert: it must not wait for vLLM, torch and
    ray.serve.llm to import (they took ~10 s of its ~15 s); the engine's names load on use."""
    import subprocess
    import sys

    code = (
        "import sys, welip.cli, welip.serving; "
        "print(sorted(m for m in ('vllm', 'torch', 'ray.serve.llm', 'ray.llm') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    check = "from welip.serving import CatalogLoraLoader, build_llm_config as b; print(b.__module__)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "welip.serving._engine"


def test_the_cli_starts_without_engine_ray_or_evaluation_libraries() -> None:
    # `welip keys create` once loaded torch, vLLM and Ray (~15 s) for one database insert.
    heavy = (
        "torch",
        "vllm",
        "ray",
        "transformers",
        "pandas",
        "mlflow",
        "redis",
        "alembic",
        "welip.evaluation",
    )
    code = f"import sys, welip.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
