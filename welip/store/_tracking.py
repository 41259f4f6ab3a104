"""MLflow tracking: where runs go, the same way for every job.

``MLFLOW_TRACKING_URI`` names the server or store; without it a SQLite file under
``~/.welip`` is used, with artifacts beside it (not in ``./mlruns`` of whatever
directory a job happens to run in). A PostgreSQL backend store may be named as WeLIP's
own database is, in either of libpq's forms with several hosts
(``postgresql://u@h1:5432,h2:5433/mlflow?target_session_attrs=read-write``): MLflow's
SQLAlchemy gets it in the spelling it takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from welip.store._database import sqlalchemy_database_url

DEFAULT_MLFLOW_URI = f"sqlite:///{Path.home() / '.welip' / 'mlflow.db'}"


def mlflow_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the local SQLite default (a PostgreSQL one in SQLAlchemy's spelling)."""
    return sqlalchemy_database_url(os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_MLFLOW_URI)


def use_mlflow(experiment: str | None = None) -> str:
    """Point MLflow at :func:`mlflow_uri` and, if given, ``experiment`` (created if new).

    Returns the tracking URI in use.
    """
    import mlflow

    uri = mlflow_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if experiment is None:
        return uri
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(experiment)
    return uri
