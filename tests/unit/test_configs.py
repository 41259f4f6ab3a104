"""Every shipped YAML under ``configs/`` loads, and every Serve config builds a valid app.

Generic over files: a new ``configs/<area>/*.yaml`` is covered by the loading test, a new
``configs/serve/*.yaml`` by the Serve tests, without touching this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import ServeDeploySchema

from deployments.agents import AgentsAppConfig
from welip.agents import AgentConfig, load_agent_config, resolve_agents
from welip.config import load_config
from welip.gateway import ServingConfig
from welip.observability._logging import SERVE_LOGGING_CONFIG
from welip.rag import IngestConfig, list_documents
from welip.training import AlignConfig, FinetuneConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"
CONFIG_FILES = sorted([*CONFIGS_DIR.rglob("*.yaml"), *CONFIGS_DIR.rglob("*.yml")])
SERVE_CONFIGS = sorted((CONFIGS_DIR / "serve").glob("*.yaml"))
LOCAL_SERVE_CONFIG = CONFIGS_DIR / "serve" / "local.yaml"
LAPTOP_CPUS = 2.0
# The args model of each Serve app builder; a new app adds its line here.
APP_ARGS: dict[str, type[BaseModel]] = {
    "deployments.gateway:build_app": ServingConfig,
    "deployments.agents:build_app": AgentsAppConfig,
}
AGENT_CONFIGS = sorted((CONFIGS_DIR / "agents").glob("*.yaml"))
RAG_CONFIGS = sorted((CONFIGS_DIR / "rag").glob("*.yaml"))
# The config model of each training area (configs/<area>/*.yaml); a new area adds its line here.
TRAINING_AREAS: dict[str, type[FinetuneConfig] | type[AlignConfig]] = {
    "finetune": FinetuneConfig,
    "align": AlignConfig,
}
TRAINING_CONFIGS = sorted(p for area in TRAINING_AREAS for p in (CONFIGS_DIR / area).glob("*.yaml"))
# Areas whose files are validated by their own tests (tests/unit/evaluation/test_config.py;
# the alert rules and their promtool cases by tests/unit/test_alerts.py).
VALIDATED_ELSEWHERE = {"eval", "prometheus"}


def load_yaml(path: Path) -> dict[str, Any]:
    """The single YAML mapping in ``path``."""
    with path.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return data


def resolve_import_path(import_path: str) -> Callable[..., Any]:
    """Import ``module:attr`` (or ``module.attr``) the way Ray Serve does."""
    module_name, sep, attr = import_path.partition(":")
    if not sep:
        module_name, _, attr = import_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def serving_configs(serve_config: dict[str, Any]) -> list[ServingConfig]:
    """The validated ``args`` of every gateway application in a Serve config."""
    return [
        ServingConfig.model_validate(app.get("args", {}))
        for app in serve_config["applications"]
        if APP_ARGS.get(app["import_path"]) is ServingConfig
    ]


def reserved_cpus(config: ServingConfig) -> float:
    """CPUs the app reserves with every deployment at its largest replica count."""
    engines = sum(
        (m.cpus_per_replica + m.replica_actor_cpus)
        * (m.autoscaling.max_replicas if m.autoscaling else m.num_replicas)
        for m in config.models
    )
    embedders = sum(e.num_cpus * e.num_replicas for e in config.embeddings)
    return engines + embedders + config.gateway.num_cpus * config.gateway.num_replicas


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_configs_exist() -> None:
    assert LOCAL_SERVE_CONFIG in SERVE_CONFIGS


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[rel(p) for p in CONFIG_FILES])
def test_config_loads(path: Path) -> None:
    assert load_yaml(path)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=[rel(p) for p in SERVE_CONFIGS])
def test_serve_config_builds_valid_apps(path: Path) -> None:
    config = load_yaml(path)
    ServeDeploySchema.model_validate(config)
    assert config["applications"], f"{rel(path)}: no applications"
    for app in config["applications"]:
        assert app["import_path"] in APP_ARGS, f"{app['import_path']}: add its args model to APP_ARGS"
        assert callable(resolve_import_path(app["import_path"])), app["import_path"]
        args = APP_ARGS[app["import_path"]].model_validate(app.get("args", {}))
        if isinstance(args, AgentsAppConfig):
            # The agent files an agents app names exist and validate.
            assert resolve_agents(args, REPO_ROOT)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=[rel(p) for p in SERVE_CONFIGS])
def test_serve_config_logs_json_lines(path: Path) -> None:
    """Every app logs JSON with the logger's name and no Serve access log (the gateway writes its own)."""
    config = load_yaml(path)
    assert config.get("logging_config") == SERVE_LOGGING_CONFIG
    assert all("logging_config" not in app for app in config["applications"]), "one logging config for all"


def test_local_config_serves_smollm2_on_loopback() -> None:
    config = load_yaml(LOCAL_SERVE_CONFIG)
    assert config["http_options"]["host"] == "127.0.0.1"
    assert config["http_options"]["port"] == 8000
    model_ids = [m.model_id for c in serving_configs(config) for m in c.models]
    assert "smollm2-135m-instruct" in model_ids


def test_local_config_fits_a_two_cpu_laptop() -> None:
    apps = serving_configs(load_yaml(LOCAL_SERVE_CONFIG))
    assert all(m.accelerator == "cpu" for c in apps for m in c.models), "a laptop has no GPU"
    total = sum(reserved_cpus(c) for c in apps)
    assert total <= LAPTOP_CPUS, f"reserves {total:g} CPUs, more than {LAPTOP_CPUS:g}"


def test_reserved_cpus_counts_replicas() -> None:
    config = ServingConfig.model_validate(
        {
            "models": [
                {"model_id": "a", "source": "a", "cpus_per_replica": 1, "replica_actor_cpus": 0.5},
                {"model_id": "b", "source": "b", "cpus_per_replica": 2, "autoscaling": {"max_replicas": 3}},
            ],
            "embeddings": [{"model_id": "e", "num_cpus": 0.25, "num_replicas": 2}],
            "gateway": {"num_cpus": 0.25, "num_replicas": 2},
        }
    )
    assert reserved_cpus(config) == pytest.approx(1.5 + (2 + 0.1) * 3 + 0.5 + 0.5)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=[rel(p) for p in TRAINING_CONFIGS])
def test_training_config_validates_and_names_shipped_data(path: Path) -> None:
    cfg = load_config(TRAINING_AREAS[path.parent.name], path)
    assert (REPO_ROOT / cfg.dataset).is_file(), f"{rel(path)}: {cfg.dataset} is not in the repository"


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=[rel(p) for p in AGENT_CONFIGS])
def test_agent_config_validates(path: Path) -> None:
    assert isinstance(load_agent_config(path), AgentConfig)


@pytest.mark.parametrize("path", RAG_CONFIGS, ids=[rel(p) for p in RAG_CONFIGS])
def test_rag_config_validates_and_names_shipped_documents(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(IngestConfig, path)
    if not cfg.documents.startswith("s3://"):
        monkeypatch.chdir(REPO_ROOT)  # the job resolves local documents against the working directory
        assert list_documents(cfg.documents, cfg.include), f"{rel(path)}: no documents in {cfg.documents}"


def test_every_config_area_is_validated() -> None:
    areas = {p.relative_to(CONFIGS_DIR).parts[0] for p in CONFIG_FILES}
    assert "align" in areas and "rag" in areas
    assert areas <= {"serve", "agents", "rag", *TRAINING_AREAS, *VALIDATED_ELSEWHERE}, (
        "add the new area's config model"
    )
