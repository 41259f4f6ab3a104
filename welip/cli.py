"""``welip`` command line: thin wrappers over the library, for people.

Every command maps onto something a script can call directly; nothing here is
hidden behind the CLI.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer

from welip.models import PACKAGED_MODELS, default_cache_dir, prepare_model
from welip.store import Database

app = typer.Typer(help="WeLIP: Ray-native LLM infrastructure.", no_args_is_help=True)
models_app = typer.Typer(help="Packaged models and the local model cache.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys in the database named by WELIP_DATABASE_URL.", no_args_is_help=True)
audit_app = typer.Typer(
    help="The audit log in the database named by WELIP_DATABASE_URL.", no_args_is_help=True
)
db_app = typer.Typer(
    help="The metadata database (WELIP_DATABASE_URL, SQLite by default).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


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
    record, key = _database().create_key(
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
    for record in _database().list_keys(include_revoked=include_revoked):
        typer.echo(json.dumps(record.public()))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (key_...).")) -> None:
    """Revoke a key; gateways stop accepting it within auth.key_cache_s."""
    if not _database().revoke_key(key_id):
        typer.echo(f"error: no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@audit_app.command("query")
def audit_query(
    principal: str | None = typer.Option(None, help="Key id or oidc:<subject>."),
    model: str | None = typer.Option(None),
    status: int | None = typer.Option(None, help="HTTP status."),
    request_id: str | None = typer.Option(None, help="The request's X-Request-Id."),
    since: datetime | None = typer.Option(None, help="ISO time (UTC if no offset)."),
    until: datetime | None = typer.Option(None, help="ISO time (UTC if no offset)."),
    limit: int = typer.Option(100, min=1, max=100_000),
) -> None:
    """Print matching audit records, newest first, one JSON object per line."""
    rows = _database().query_audit(
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


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(text: str) -> datetime:
    unit = text[-1:]
    if unit in _UNITS_S and text[:-1].isdigit():
        return datetime.now(timezone.utc) + timedelta(seconds=int(text[:-1]) * _UNITS_S[unit])
    value = _utc(datetime.fromisoformat(text))
    assert value is not None
    if value <= datetime.now(timezone.utc):
        raise ValueError(f"expiry {text} is in the past")
    return value


def main() -> None:
    """Console-script entry point."""
    app()
