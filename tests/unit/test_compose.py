"""``compose.yaml``, the one-node stack, as Docker Compose reads it.

``docker-compose config`` (Debian's docker-compose 1.29, ``/usr/bin/docker-compose``)
validates the file against the Compose schema and interpolates it; the tests read its output.
They give it the required secrets as dummy values in an environment of their own and an empty
env file, so a developer's shell or ``.env`` never leaks in. Without docker-compose they skip,
and fail under CI (``CI=true``). The Serve config the stack deploys is validated with every
other one by ``tests/unit/test_configs.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_dashboards import run_promtool

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PROMETHEUS_CONFIG = REPO_ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = REPO_ROOT / "docker" / "grafana" / "provisioning"
DOCKER_COMPOSE = Path("/usr/bin/docker-compose")
# Compose refuses to start without these (`${NAME:?message}`); the tests' dummy values.
SECRETS = {
    "POSTGRES_PASSWORD": "test-postgres-password",
    "MINIO_ROOT_PASSWORD": "test-minio-root-password",
    "WELIP_S3_SECRET_ACCESS_KEY": "test-s3-secret",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
    "WELIP_ADMIN_KEY": "wlp_test-admin-key",
    "WELIP_CALLER_TOKEN_SECRET": "test-caller-token-secret",
    "RAY_AUTH_TOKEN": "test-ray-auth-token",
}
# The platform's services (all long-running) and the one-shots that prepare them.
PLATFORM = {"welip", "postgres", "redis", "minio", "mlflow", "prometheus", "grafana", "phoenix"}
ONE_SHOT = {"minio-init"}
# (service, host address, port) published on the host; "" is every interface. Only the
# authenticated gateway and Grafana's login face the network; the rest stay on loopback.
PUBLISHED = {
    ("welip", "", 8000),
    ("welip", "127.0.0.1", 8265),
    ("grafana", "", 3000),
    ("mlflow", "127.0.0.1", 5000),
    ("phoenix", "127.0.0.1", 6006),
}
# Where each stateful service keeps its data: a named volume.
STATE = {
    "welip": "/var/lib/welip/spool",
    "postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "minio": "/data",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
    "phoenix": "/mnt/data",
}
TWO_NODE_HEAD = ["welip-node", "head"]


def require_docker_compose() -> None:
    if DOCKER_COMPOSE.is_file():
        return
    message = f"{DOCKER_COMPOSE} is missing (Debian's docker-compose package)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def compose_config(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of compose.yaml with exactly ``env`` (plus PATH and HOME)."""
    require_docker_compose()
    empty_env_file = workdir / "empty.env"
    empty_env_file.touch()
    return subprocess.run(
        [
            str(DOCKER_COMPOSE),
            "--project-directory",
            str(REPO_ROOT),
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            str(empty_env_file),
            "config",
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = compose_config(SECRETS, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


@cache
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def published_ports(service: dict[str, Any]) -> set[tuple[str, int]]:
    """(host address, host port) of every published port, short or long syntax."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                ports.add((entry.get("host_ip", ""), int(entry["published"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 3:
            ports.add((parts[0], int(parts[1])))
        elif len(parts) == 2:
            ports.add(("", int(parts[0])))
    return ports


def named_volumes(service: dict[str, Any], declared: set[str]) -> dict[str, str]:
    """Container path -> volume name of the service's named volumes."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if source in declared:
            mounts[target] = source
    return mounts


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host path, container path, mode) of the service's bind mounts."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *mode = str(entry).split(":")
        if source.startswith("/"):
            mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def package_version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def test_services_are_the_platform_and_its_one_shots(config: dict[str, Any]) -> None:
    assert set(config["services"]) == PLATFORM | ONE_SHOT


def test_long_running_services_are_health_checked_and_restarted(config: dict[str, Any]) -> None:
    for name in PLATFORM:
        service = config["services"][name]
        healthcheck = service.get("healthcheck", {})
        assert healthcheck.get("test") and not healthcheck.get("disable"), f"{name}: no healthcheck"
        assert service.get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert config["services"][name].get("restart") == "no", name


def test_dependencies_wait_until_healthy_or_done(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for dependency, options in service.get("depends_on", {}).items():
            expected = "service_healthy" if dependency in PLATFORM else "service_completed_successfully"
            assert options.get("condition") == expected, f"{name} -> {dependency}"
    welip = config["services"]["welip"]["depends_on"]
    assert {"postgres", "redis", "minio-init"} <= set(welip)


def test_stateful_services_keep_data_in_named_volumes(config: dict[str, Any]) -> None:
    declared = set(config.get("volumes", {}))
    for name, target in STATE.items():
        assert target in named_volumes(config["services"][name], declared), f"{name}: {target}"


def test_only_intended_ports_are_published(config: dict[str, Any]) -> None:
    published = {
        (name, address, port)
        for name, service in config["services"].items()
        for address, port in published_ports(service)
    }
    assert published == PUBLISHED


def test_ray_dashboard_is_published_on_loopback_only(config: dict[str, Any]) -> None:
    dashboard = {address for address, port in published_ports(config["services"]["welip"]) if port == 8265}
    assert dashboard == {"127.0.0.1"}


def test_welip_runs_the_two_node_tests_head_command_from_the_welip_image(config: dict[str, Any]) -> None:
    welip = config["services"]["welip"]
    assert welip["command"][:2] == TWO_NODE_HEAD
    image = f"welip/welip:{package_version()}-smollm2"
    assert raw_compose()["x-welip-image"] == f"${{WELIP_IMAGE:-{image}}}"
    for name in ("welip", "mlflow"):
        assert config["services"][name]["image"] == image, name


def test_welip_image_can_be_overridden(tmp_path: Path) -> None:
    image = "registry.example/welip:1.2.3"
    result = compose_config({**SECRETS, "WELIP_IMAGE": image}, tmp_path)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {services[n]["image"] for n in ("welip", "mlflow")} == {image}


def test_welip_deploys_a_shipped_serve_config_that_fits_the_stack(config: dict[str, Any]) -> None:
    env = config["services"]["welip"]["environment"]
    for name in ("WELIP_SERVE_CONFIG", "WELIP_INGEST_CONFIG"):
        assert (REPO_ROOT / env[name]).is_file(), f"{name}: {env[name]} is not in the image's /app"
    serve = yaml.safe_load((REPO_ROOT / env["WELIP_SERVE_CONFIG"]).read_text())
    assert serve["http_options"] == {"host": "0.0.0.0", "port": 8000}
    audits = [
        trust["audit"]
        for app in serve["applications"]
        for trust in (app["args"].get("gateway", {}), app["args"].get("trust", {}))
        if "audit" in trust
    ]
    assert audits and all(a["spool_dir"] == STATE["welip"] for a in audits)
    # Prometheus scrapes the port the head exports metrics on.
    command = config["services"]["welip"]["command"]
    port = command[command.index("--metrics-export-port") + 1]
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    assert f"welip:{port}" in {t for job in scrape for c in job["static_configs"] for t in c["targets"]}


def test_images_are_pinned(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and "/" not in tag and tag != "latest", f"{name}: {service['image']}"


def test_mounted_host_files_are_in_the_repository_and_read_only(config: dict[str, Any]) -> None:
    mounts = [m for service in config["services"].values() for m in bind_mounts(service)]
    assert mounts
    for source, target, mode in mounts:
        path = Path(source)
        assert path.is_relative_to(REPO_ROOT) and path.exists(), f"{source} -> {target}"
        assert mode == "ro", f"{source} -> {target}"


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_missing_secret_stops_compose_with_its_message(name: str, tmp_path: Path) -> None:
    result = compose_config({k: v for k, v in SECRETS.items() if k != name}, tmp_path)
    assert result.returncode != 0
    assert f"set {name} in .env" in result.stderr


def test_secrets_come_from_env_never_from_compose_yaml() -> None:
    text = COMPOSE_FILE.read_text()
    assert set(re.findall(r"\$\{(\w+):\?", text)) == set(SECRETS)
    secretive = re.compile(r"PASSWORD|SECRET|TOKEN$|ADMIN_KEY|API_KEY|MC_HOST")
    for name, service in raw_compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            if secretive.search(key):
                assert "${" in str(value), f"{name}: {key} is written in compose.yaml"
    # .env.example names every secret, empty (compose refuses empty ones); git ignores .env.
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"\w+=", line)
    )
    assert {name: example.get(name) for name in SECRETS} == dict.fromkeys(SECRETS, "")
    assert "/.env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_prometheus_config_loads_welip_alert_rules(config: dict[str, Any], tmp_path: Path) -> None:
    # promtool reads the rule files where the container sees them: the mounts, rebuilt here.
    mounts = {target: Path(source) for source, target, _ in bind_mounts(config["services"]["prometheus"])}
    config_file = mounts["/etc/prometheus/prometheus.yml"]
    assert config_file == PROMETHEUS_CONFIG
    root = tmp_path / "etc" / "prometheus"
    for target, source in mounts.items():
        (tmp_path / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, tmp_path / target.lstrip("/"))
    result = run_promtool("check", "config", str(root / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_grafana_provisions_prometheus_and_welip_dashboards(config: dict[str, Any]) -> None:
    mounts = {Path(source): target for source, target, _ in bind_mounts(config["services"]["grafana"])}
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    assert [(d["type"], d["url"]) for d in datasources["datasources"]] == [
        ("prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "welip.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["options"]["path"] == mounts[REPO_ROOT / "configs" / "grafana" / "dashboards"]
    for folder in ("datasources", "dashboards"):
        assert mounts[GRAFANA_PROVISIONING / folder] == f"/etc/grafana/provisioning/{folder}"
