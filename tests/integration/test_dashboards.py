"""The dashboards and alert rules against a real Prometheus scraping the session's Ray.

After some traffic (a chat request, a streamed one, refused ones), Prometheus (Debian's
binary, unpacked by ``make install``) scrapes the session's metrics endpoint every second
and loads the alert rules; every dashboard query then runs through its HTTP API, every
metric a query or rule names is among those scraped, and every rule evaluates healthy.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.integration.conftest import ADMIN_KEY, METRICS_PORT, MODEL
from tests.unit.test_alerts import RULES_FILE, alerts
from tests.unit.test_dashboards import PROMETHEUS, all_dashboard_queries, metric_names, substitute

pytestmark = pytest.mark.integration

# Series only jobs and agent runs emit (other test modules run them): they count as scraped
# when present, and may be absent when this module runs alone.
JOB_METRIC_PREFIXES = ("ray_welip_eval_", "ray_welip_finetune_", "ray_welip_agent_")
# Counters of what a healthy session never does: Ray exports a counter from its first count.
NEVER_COUNTED_WHEN_HEALTHY = frozenset({"ray_welip_audit_dropped_records_total"})
SCRAPE_TIMEOUT_S = 45
QUERIES = all_dashboard_queries()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def referenced_metrics() -> set[str]:
    """Every metric a dashboard query or alert rule names."""
    names = {name for _, expr in QUERIES for name in metric_names(substitute(expr, {"model": MODEL}))}
    return names | {name for rule in alerts() for name in metric_names(rule["expr"])}


def required_metrics() -> set[str]:
    return {
        name
        for name in referenced_metrics() - NEVER_COUNTED_WHEN_HEALTHY
        if not name.startswith(JOB_METRIC_PREFIXES)
    }


def api(prometheus: str, path: str, **params: str) -> Any:
    """One Prometheus HTTP API answer's ``data``, after asserting it succeeded."""
    response = httpx.get(f"{prometheus}/api/v1/{path}", params=params, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (params, body)
    return body["data"]


def scraped_names(prometheus: str) -> set[str]:
    return set(api(prometheus, "label/__name__/values"))


@contextlib.contextmanager
def running_prometheus(target: str, rule_files: list[Path], workdir: Path) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping ``target`` every second; stopped on exit."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    if not PROMETHEUS.is_file():
        pytest.fail(f"{PROMETHEUS} is missing: run `make install`")
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def traffic(base_url: str, client: OpenAI) -> None:
    """A chat request (twice, so the response cache is asked), a streamed one, and refused ones."""
    messages = [{"role": "user", "content": "Name one colour."}]
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True)
    assert list(stream)
    body = {"model": MODEL, "messages": messages, "max_tokens": 8}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 401
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        unknown = {**body, "model": "no-such-model"}
        assert http.post("/v1/chat/completions", json=unknown, headers=headers).status_code == 404


@pytest.fixture(scope="module")
def prometheus(traffic: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus that has scraped the session (every series the dashboards need, or the timeout)."""
    workdir = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(f"127.0.0.1:{METRICS_PORT}", [RULES_FILE], workdir) as url:
        # Ray's metrics agent exports what the replicas record every few seconds.
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        while time.monotonic() < deadline and not required_metrics() <= scraped_names(url):
            time.sleep(1)
        yield url


@pytest.mark.parametrize(("name", "expr"), QUERIES, ids=[name for name, _ in QUERIES])
def test_dashboard_query_runs(prometheus: str, name: str, expr: str) -> None:
    data = api(prometheus, "query", query=substitute(expr, {"model": MODEL}))
    assert data["resultType"] in {"vector", "scalar", "matrix"}


def test_every_metric_the_dashboards_and_alerts_name_is_scraped(prometheus: str) -> None:
    scraped = scraped_names(prometheus)
    assert "ray_welip_gateway_requests_total" in scraped, "Prometheus scraped no WeLIP series"
    missing = sorted(required_metrics() - scraped)
    assert missing == [], f"named by dashboards or alerts, absent from the scrape: {missing}"


def test_alert_rules_load_and_evaluate_healthy(prometheus: str) -> None:
    expected = {rule["alert"] for rule in alerts()}
    deadline = time.monotonic() + 20
    while True:
        rules = [rule for group in api(prometheus, "rules")["groups"] for rule in group["rules"]]
        evaluated = {r["name"]: r for r in rules if r["lastEvaluation"] > "0001-01-01T00:00:00Z"}
        if set(evaluated) >= expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {rule["name"] for rule in rules} == expected
    unhealthy = {
        name: (r["health"], r.get("lastError")) for name, r in evaluated.items() if r["health"] != "ok"
    }
    assert set(evaluated) == expected and unhealthy == {}
