"""``welip`` command line: thin wrappers over the library, for people.

Every command maps onto something a script can call directly; nothing here is
hidden behind the CLI.
"""

from __future__ import annotations

from pathlib import Path

import typer

from welip.models import PACKAGED_MODELS, default_cache_dir, prepare_model

app = typer.Typer(help="WeLIP: Ray-native LLM infrastructure.", no_args_is_help=True)
models_app = typer.Typer(help="Packaged models and the local model cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")


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


def main() -> None:
    """Console-script entry point."""
    app()
