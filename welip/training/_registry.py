"""What a training job leaves behind: outputs in storage, an MLflow run and model version,
and a catalog row the gateway hot-loads from."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess  # nosec B404 # one call, a fixed argument list without a shell (below)
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa

from welip.store import AdapterRecord, CatalogStore, Database, filesystem, use_mlflow
from welip.training._config import _Common
from welip.training._model import ADAPTER_DIR

logger = logging.getLogger(__name__)


class MlflowRun(NamedTuple):
    """The job's MLflow run, which the driver opens and workers log into by id."""

    run_id: str
    tracking_uri: str


def config_hash(cfg: _Common) -> str:
    """sha256 of the validated config (sorted JSON): equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def git_commit() -> str:
    """The commit the job's code came from: ``$WELIP_GIT_COMMIT``, else ``git``, else ``unknown``.

    ``ray job submit --working-dir`` ships files without ``.git``; submitters that know
    the commit pass it in the variable.
    """
    if os.environ.get("WELIP_GIT_COMMIT"):
        return os.environ["WELIP_GIT_COMMIT"]
    try:
        # A fixed argument list, no shell; `git` from the job's own PATH, as a shell would find it.
        out = subprocess.run(  # nosec B603 B607
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def lineage(cfg: _Common, dataset_sha256: str) -> dict[str, str]:
    """Where an adapter came from: base model, data, config and code."""
    return {
        "base_model": cfg.model,
        "base_model_id": cfg.base_model_id,
        "dataset": cfg.dataset,
        "dataset_sha256": dataset_sha256,
        "config_sha256": config_hash(cfg),
        "git_commit": git_commit(),
    }


def start_mlflow_run(cfg: _Common, run_name: str, tags: dict[str, str]) -> MlflowRun:
    """Open the job's MLflow run with the config as params.

    Workers log into this run by id, so restarted workers add to it rather than start
    another.
    """
    import mlflow

    uri = use_mlflow(cfg.experiment)
    run = mlflow.start_run(run_name=run_name, tags=tags)
    params = {
        k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in cfg.model_dump().items()
    }
    mlflow.log_params(params)
    mlflow.end_run()
    return MlflowRun(run.info.run_id, uri)


def train_storage(root: str) -> tuple[str, Any]:
    """Ray Train's ``storage_path`` and filesystem for a local path or an ``s3://`` URL."""
    if not root.startswith("s3://"):
        path = Path(root).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path_in_bucket = filesystem(root)  # s3fs with WELIP_S3_ENDPOINT_URL (MinIO)
    return path_in_bucket, PyFileSystem(FSSpecHandler(fs))


def worker_env() -> dict[str, str]:
    """What training workers need from this shell: storage, tracking, model cache, AWS keys.

    Workers on an existing cluster do not inherit the driver's environment.
    """
    names = ("WELIP_STORAGE_URL", "WELIP_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "WELIP_MODEL_CACHE")
    aws = [n for n in os.environ if n.startswith("AWS_")]
    return {n: os.environ[n] for n in (*names, *aws) if os.environ.get(n)}


def log_outputs(
    run_id: str, adapter: Path, cfg: _Common, config_name: str, skipped_rows: int, train_s: float
) -> None:
    """The adapter and config (as ``config_name``) as artifacts of the job's MLflow run, with its totals."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.log_artifacts(run_id, str(adapter), artifact_path=ADAPTER_DIR)
    client.log_dict(run_id, cfg.model_dump(mode="json"), config_name)
    client.log_metric(run_id, "train_s", train_s)
    client.log_metric(run_id, "skipped_rows", skipped_rows)


def copy_tree(src: str | Path, dest_url: str) -> None:
    """Copy a local folder to ``dest_url`` (local path or ``s3://``)."""
    fs, dest = filesystem(dest_url)
    for path in sorted(Path(src).rglob("*")):
        if path.is_file():
            target = f"{dest}/{path.relative_to(src).as_posix()}"
            if not dest_url.startswith("s3://"):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            fs.put_file(str(path), target)


def register_adapter(
    cfg: _Common,
    adapter_url: str,
    *,
    kind: str,
    mlflow_run_id: str | None,
    tags: dict[str, str],
    db: Database,
) -> AdapterRecord:
    """Register the adapter: an MLflow model version (when tracked) and a catalog row.

    The MLflow version number is the catalog version, so ``<name>-v<N>`` means the same
    adapter in both, unless the catalog already holds that version (two registries, one
    catalog): then the next free one, named in the MLflow version's ``welip.model_id``
    tag. The catalog row's lineage keeps ``mlflow_model_version``. Returns the catalog record.
    """
    version: int | None = None
    client: Any = None
    if mlflow_run_id is not None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        use_mlflow()
        client = MlflowClient()
        try:
            client.create_registered_model(
                cfg.name, description=f"LoRA adapters of {cfg.base_model_id} trained by WeLIP"
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        model_version = client.create_model_version(
            cfg.name, source=adapter_url, run_id=mlflow_run_id, tags={**tags, "welip.kind": kind}
        )
        version = int(model_version.version)
    lineage = {**tags, **({"mlflow_model_version": str(version)} if version is not None else {})}
    fields: dict[str, Any] = {
        "name": cfg.name,
        "base_model_id": cfg.base_model_id,
        "uri": adapter_url,
        "kind": kind,
        "mlflow_run_id": mlflow_run_id,
        "lineage": lineage,
    }
    try:
        row = CatalogStore(db).register_adapter(version=version, **fields)
    except sa.exc.IntegrityError:
        # The catalog already has this version (another MLflow registry registered it):
        # take the next free one; the MLflow version records which catalog id it is.
        logger.warning("catalog already has %s-v%s; registering the next free version", cfg.name, version)
        row = CatalogStore(db).register_adapter(version=None, **fields)
    if client is not None:
        client.set_model_version_tag(cfg.name, str(version), "welip.model_id", row.id)
    return row
