"""``welip`` command line: thin wrappers over the library, for people.

Every command maps onto something a script can call directly; nothing here is
hidden behind the CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import typer

from welip.config import load_config
from welip.models import PACKAGED_MODELS, default_cache_dir, prepare_model
from welip.store import (
    AuditStore,
    BackupError,
    CatalogStore,
    Database,
    EvalRunStore,
    KeyStore,
    backup_database,
    restore_database,
)

app = typer.Typer(help="WeLIP: Ray-native LLM infrastructure.", no_args_is_help=True)
models_app = typer.Typer(help="Packaged models and the local model cache.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys in the database named by WELIP_DATABASE_URL.", no_args_is_help=True)
audit_app = typer.Typer(
    help="The audit log in the database named by WELIP_DATABASE_URL.", no_args_is_help=True
)
eval_app = typer.Typer(help="Evaluation jobs (jobs/evaluate.py) and their results.", no_args_is_help=True)
db_app = typer.Typer(
    help="The metadata database (WELIP_DATABASE_URL, SQLite by default).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(eval_app, name="eval")
alias_app = typer.Typer(
    help="Model aliases the gateway routes (switched by `welip promote`).", no_args_is_help=True
)
adapters_app = typer.Typer(help="Registered LoRA adapters (the serving catalog).", no_args_is_help=True)
finetune_app = typer.Typer(help="LoRA fine-tuning jobs (jobs/finetune.py).", no_args_is_help=True)
align_app = typer.Typer(help="GRPO alignment jobs (jobs/align.py).", no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")
app.add_typer(align_app, name="align")
app.add_typer(alias_app, name="alias")
app.add_typer(adapters_app, name="adapters")


def _database() -> Database:
    db = Database()
    db.upgrade()
    return db


@models_app.command("list")
def list_models() -> None:
    """List packaged models and whether each is prepared in the cache."""
    cache = default_cache_dir()
    for name, packaged in PACKAGED_MODELS.items():
        state = "prepared" if (cache / name / ".welip-complete").is_file() else "not prepared"
        typer.echo(f"{name}\t{packaged.package}/{packaged.gguf_file}\t{state}")


@models_app.command("prepare")
def prepare(
    name: str = typer.Argument(..., help="Packaged model name, see `welip models list`."),
    cache_dir: Path | None = typer.Option(
        None, help="Cache root (default: $WELIP_MODEL_CACHE or ~/.cache/welip/models)."
    ),
) -> None:
    """Convert a packaged GGUF model into a safetensors directory (once; safe to rerun)."""
    try:
        path = prepare_model(name, cache_dir)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the newest version."""
    db = _database()
    typer.echo(f"database at {db.engine.url.render_as_string(hide_password=True)} is up to date")


@db_app.command("backup")
def db_backup(
    location: str = typer.Argument(
        ..., help="Backup file: a local path or s3://bucket/key (replaced if present)."
    ),
    timeout_s: float = typer.Option(3600, min=1, help="Longest pg_dump may run."),
) -> None:
    """Back up the database: SQLite's online backup, or pg_dump of the whole PostgreSQL database.

    The PostgreSQL dump includes LangGraph's checkpoint tables (agent state). s3:// goes
    through WELIP_S3_ENDPOINT_URL and WELIP_S3_CA_BUNDLE as artifacts do.
    """
    try:
        info = backup_database(location, timeout_s=timeout_s)
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    size = f"{info.size_bytes} bytes, {info.duration_s:.1f}s"
    typer.echo(f"backed up {info.dialect} database to {info.location} ({size})")


@db_app.command("restore")
def db_restore(
    location: str = typer.Argument(
        ..., help="A file `welip db backup` wrote: local path or s3://bucket/key."
    ),
    force: bool = typer.Option(
        False, help="Restore into a database that already holds tables (the backup's tables are replaced)."
    ),
    timeout_s: float = typer.Option(3600, min=1, help="Longest pg_restore may run."),
) -> None:
    """Restore a backup into an empty database (WELIP_DATABASE_URL), then migrate it to the newest schema.

    A PostgreSQL database must exist first (createdb); a SQLite file is created.
    """
    try:
        info = restore_database(location, force=force, timeout_s=timeout_s)
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored {info.dialect} database from {info.location} and migrated it to head")


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="Who or what the key is for."),
    role: str = typer.Option(..., help="A role of the gateway config (admin, developer, user, ...)."),
    models: str | None = typer.Option(None, help="Comma-separated model ids narrowing the role's."),
    rpm: int | None = typer.Option(None, min=1, help="Requests per minute."),
    tpm: int | None = typer.Option(None, min=1, help="Tokens per minute."),
    token_budget: int | None = typer.Option(None, min=1, help="Tokens for the key's lifetime."),
    expires: str | None = typer.Option(None, help="Lifetime such as 30d, 12h, 90m, or an ISO date."),
) -> None:
    """Create a key and print it once; only its hash is stored."""
    try:
        expires_at = _expiry(expires) if expires else None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    record, key = KeyStore(_database()).create_key(
        name=name,
        role=role,
        models=allowed,
        rpm=rpm,
        tpm=tpm,
        token_budget=token_budget,
        expires_at=expires_at,
    )
    typer.echo(json.dumps(record.public()), err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(include_revoked: bool = typer.Option(False, help="Show revoked keys too.")) -> None:
    """List keys (never the keys themselves), one JSON object per line."""
    for record in KeyStore(_database()).list_keys(include_revoked=include_revoked):
        typer.echo(json.dumps(record.public()))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key_...).")) -> None:
    """Revoke a key; gateways stop accepting it within auth.key_cache_s."""
    if not KeyStore(_database()).revoke_key(key_id):
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@audit_app.command("query")
def audit_query(
    principal: str | None = typer.Option(None, help="Key id or oidc:<issuer>|<subject>."),
    model: str | None = typer.Option(None),
    status: int | None = typer.Option(None, help="HTTP status."),
    request_id: str | None = typer.Option(None, help="The request's X-Request-Id."),
    since: datetime | None = typer.Option(None, help="ISO time (UTC if no offset)."),
    until: datetime | None = typer.Option(None, help="ISO time (UTC if no offset)."),
    limit: int = typer.Option(100, min=1, max=100_000),
) -> None:
    """Print matching audit records, newest first, one JSON object per line."""
    rows = AuditStore(_database()).query_audit(
        principal=principal,
        model=model,
        status=status,
        request_id=request_id,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
    )
    for row in rows:
        typer.echo(json.dumps(row, default=str))


# Passed on to a submitted job when set here: where results go and who it reports to.
_JOB_ENV = ("WELIP_DATABASE_URL", "WELIP_STORAGE_URL", "WELIP_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI")


def job_spec(
    script: str, config: Path, overrides: list[str], python: str = "python", env_names: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A Ray Job running ``jobs/<script>``: the same command as a manual ``ray job submit``.

    The job's environment carries the storage and tracking settings set in this shell,
    the commit being submitted (lineage of trained adapters) and ``env_names``.
    """
    names = [*_JOB_ENV, "WELIP_GIT_COMMIT", *env_names]
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    if script != "evaluate.py" and "WELIP_GIT_COMMIT" not in env:
        # working_dir ships no .git: the job learns its commit from here.
        from welip.training import git_commit

        env["WELIP_GIT_COMMIT"] = git_commit()
    entrypoint = " ".join(
        shlex.quote(part) for part in [python, f"jobs/{script}", "--config", str(config), *overrides]
    )
    runtime_env: dict[str, Any] = {"working_dir": "."}
    if env:
        runtime_env["env_vars"] = env
    return {"entrypoint": entrypoint, "runtime_env": runtime_env}


def eval_job_spec(config: Path, overrides: list[str], python: str = "python") -> dict[str, Any]:
    """The Ray Job `welip eval run` submits (see :func:`job_spec`).

    The suite is validated here first, so a bad config fails before any job starts; the
    API key variables the suite names go into the job's runtime env.
    """
    from welip.evaluation import SuiteConfig

    suite = load_config(SuiteConfig, config, overrides)
    keys = tuple(t.api_key_env for t in suite.endpoints if t.api_key_env)
    return job_spec("evaluate.py", config, overrides, python, keys)


def submit_job(spec: dict[str, Any], address: str | None, wait: bool) -> None:
    """Submit ``spec`` to the cluster's Job API; follow its logs and exit 1 unless it succeeds."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from welip._compat.ray import enable_token_auth_if_available

    # Clusters started here use token auth when a token exists (Ray's default): present
    # it, as a driver joining with ray.init() does, unless RAY_AUTH_MODE says otherwise.
    enable_token_auth_if_available()
    client = JobSubmissionClient(_dashboard(address))
    job_id = client.submit_job(**spec)
    typer.echo(f"submitted {job_id}: {spec['entrypoint']}", err=True)
    if not wait:
        typer.echo(job_id)
        return

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            typer.echo(chunk, nl=False)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    typer.echo(f"job {job_id}: {status}", err=True)
    if status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


def _dashboard(address: str | None) -> str:
    target = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    if not target.startswith("http"):
        target = "http://127.0.0.1:8265"  # a GCS address such as auto or host:6379: the local dashboard
    return target


def _job_python(address: str | None, python: str | None) -> str:
    # A cluster on this machine runs jobs with this interpreter; elsewhere, the image's.
    local = urlparse(_dashboard(address)).hostname in ("127.0.0.1", "localhost", "::1")
    return python or (sys.executable if local else "python")


_ADDRESS_HELP = "Ray dashboard address (default: $RAY_ADDRESS or http://127.0.0.1:8265)."
_PYTHON_HELP = "Interpreter of the job (default: this one for a cluster on this machine, else `python`)."


@eval_app.command("run", context_settings={"allow_extra_args": False, "ignore_unknown_options": True})
def eval_run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Suite YAML (configs/eval/...)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides (target.model=...)."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    wait: bool = typer.Option(True, help="Follow the job's logs until it ends."),
    python: str | None = typer.Option(None, help=_PYTHON_HELP),
) -> None:
    """Submit jobs/evaluate.py as a Ray Job from the repository root and follow its logs."""
    try:
        spec = eval_job_spec(config, list(overrides or []), _job_python(address, python))
    except (OSError, ValueError) as exc:
        typer.echo(f"error: invalid suite {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    submit_job(spec, address, wait)


def _training_run(
    script: str,
    kind: Any,
    config: Path,
    overrides: list[str],
    address: str | None,
    wait: bool,
    python: str | None,
) -> None:
    try:
        load_config(kind, config, overrides)  # a bad config fails here, before any job starts
    except (OSError, ValueError) as exc:
        typer.echo(f"error: invalid config {config}: {exc}", err=True)
        raise typer.Exit(2) from None
    submit_job(job_spec(script, config, overrides, _job_python(address, python)), address, wait)


@finetune_app.command("run", context_settings={"allow_extra_args": False, "ignore_unknown_options": True})
def finetune_run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="configs/finetune/<name>.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides (max_steps=10 ...)."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    wait: bool = typer.Option(True, help="Follow the job's logs until it ends."),
    python: str | None = typer.Option(None, help=_PYTHON_HELP),
) -> None:
    """Submit jobs/finetune.py as a Ray Job and follow its logs (the adapter id comes last)."""
    from welip.training import FinetuneConfig

    _training_run("finetune.py", FinetuneConfig, config, list(overrides or []), address, wait, python)


@align_app.command("run", context_settings={"allow_extra_args": False, "ignore_unknown_options": True})
def align_run(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="configs/align/<name>.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides (max_steps=10 ...)."),
    address: str | None = typer.Option(None, help=_ADDRESS_HELP),
    wait: bool = typer.Option(True, help="Follow the job's logs until it ends."),
    python: str | None = typer.Option(None, help=_PYTHON_HELP),
) -> None:
    """Submit jobs/align.py as a Ray Job and follow its logs."""
    from welip.training import AlignConfig

    _training_run("align.py", AlignConfig, config, list(overrides or []), address, wait, python)


def _run_samples(run: str, eval_runs: EvalRunStore | None) -> tuple[str, list[dict[str, Any]]]:
    """A run's label and samples: an eval run id from the database, or a results folder/URL."""
    from welip.evaluation import read_samples

    if "/" not in run and not Path(run).is_dir() and eval_runs is not None:
        row = eval_runs.get_eval_run(run)
        if row is None:
            raise ValueError(f"no eval run {run} in the database")
        return f"{row.task} {row.model} ({run[:8]})", read_samples(row.results_url)
    return run, read_samples(run)


@eval_app.command("compare")
def eval_compare(
    run_a: str = typer.Argument(..., help="Baseline: an eval run id, or a results folder or s3:// URL."),
    run_b: str = typer.Argument(..., help="Candidate, compared with the baseline."),
    metric: list[str] = typer.Option(None, help="Metrics to compare (default: all both runs have)."),
    resamples: int = typer.Option(2000, min=100, max=1_000_000, help="Bootstrap resamples."),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999, help="Interval coverage."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per-metric difference (B - A) with a paired bootstrap interval, and per-sample wins/losses."""
    from welip.evaluation import compare_samples, comparison_table

    by_path = all("/" in r or Path(r).is_dir() for r in (run_a, run_b))
    eval_runs = None if by_path else EvalRunStore(_database())
    try:
        label_a, samples_a = _run_samples(run_a, eval_runs)
        label_b, samples_b = _run_samples(run_b, eval_runs)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    rows = compare_samples(
        samples_a, samples_b, metrics=metric or None, resamples=resamples, confidence=confidence
    )
    if not rows:
        typer.echo("error: the runs share no scored samples on a common metric", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    typer.echo(f"A: {label_a}\nB: {label_b}")
    typer.echo(comparison_table(rows, confidence))


@eval_app.command("list")
def eval_list(
    task: str | None = typer.Option(None),
    model: str | None = typer.Option(None),
    limit: int = typer.Option(20, min=1, max=10_000),
) -> None:
    """Recent eval runs from the database, one JSON object per line."""
    for row in EvalRunStore(_database()).list_eval_runs(task=task, model=model, limit=limit):
        typer.echo(json.dumps(row.public(), default=str))


@adapters_app.command("list")
def adapters_list(name: str | None = typer.Option(None, help="Only versions of this adapter.")) -> None:
    """Registered adapters, newest first, one JSON object per line."""
    for row in CatalogStore(_database()).list_adapters(name=name):
        typer.echo(json.dumps(row.public(), default=str))


@alias_app.command("list")
def alias_list() -> None:
    """Every alias and its target, one JSON object per line."""
    for row in CatalogStore(_database()).list_aliases():
        typer.echo(json.dumps(row.public(), default=str))


@alias_app.command("set")
def alias_set(
    alias: str = typer.Argument(..., help="The name clients send as `model`."),
    target: str = typer.Argument(..., help="A served model id or an adapter id (<name>-v<N>)."),
) -> None:
    """Point an alias at a model without a gate (first setup, rollback); audited."""
    from welip.serving import PromotionRefused, set_alias_ungated

    db = _database()
    try:
        row = set_alias_ungated(db, alias, target)
    except PromotionRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(row.public(), default=str))


@app.command("promote")
def promote(
    candidate: str = typer.Argument(..., help="Model to promote: an adapter id (<name>-v<N>) or a model id."),
    alias: str = typer.Option(..., help="The alias to switch."),
    gate: Path = typer.Option(..., exists=True, dir_okay=False, help="Evaluation suite (configs/eval/...)."),
    require: list[str] = typer.Option(
        ..., help='Requirement, repeatable: "METRIC >= current", "METRIC > current + 0.02", "METRIC >= 0.5".'
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="key=value override of the gate suite, repeatable (target.base_url=...)."
    ),
    wait_s: float = typer.Option(
        30, min=0, help="After a switch, wait this long for the gateway to route it."
    ),
) -> None:
    """Evaluate CANDIDATE and the alias's current model on the gate; switch the alias only if it passes.

    Both evaluations run jobs/evaluate.py (joining the Ray cluster as it does by hand);
    the decision and both eval run ids go to the audit log and MLflow either way. Exit
    status: 0 promoted, 1 gate failed, 2 bad input.
    """
    from welip.serving import (
        PromotionFailed,
        PromotionRefused,
        PromotionRequest,
        promote_candidate,
        wait_until_routed,
    )

    try:
        request = PromotionRequest.parse(
            candidate, alias=alias, gate=gate, requirements=require, overrides=overrides or []
        )
        result = promote_candidate(request, db=_database(), progress=lambda line: typer.echo(line, err=True))
    except PromotionRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except PromotionFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    decision = result.decision
    for line in decision.checks:
        typer.echo(f"  {line}")
    evidence = ", ".join(r for r in (decision.candidate_eval_run, decision.current_eval_run) if r)
    verdict = "promoted" if decision.promoted else "not promoted"
    serving = candidate if decision.promoted else decision.current
    typer.echo(f"{verdict}: {alias} -> {serving} (eval runs {evidence}; MLflow run {result.mlflow_run_id})")
    if not decision.promoted:
        raise typer.Exit(1)
    if wait_s and not wait_until_routed(request.endpoint, alias, candidate, wait_s):
        typer.echo(f"warning: the gateway did not route {alias} to {candidate} within {wait_s:g}s", err=True)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(text: str) -> datetime:
    unit = text[-1:]
    if unit in _UNITS_S and text[:-1].isdigit():
        return datetime.now(UTC) + timedelta(seconds=int(text[:-1]) * _UNITS_S[unit])
    value = _as_utc(datetime.fromisoformat(text))
    if value <= datetime.now(UTC):
        raise ValueError(f"expiry {text} is in the past")
    return value


def main() -> None:
    """Console-script entry point."""
    app()
