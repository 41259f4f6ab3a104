"""Grafana dashboards (``configs/grafana/dashboards/*.json``) and the ConfigMap that provisions them.

Each dashboard is well formed (one Prometheus datasource variable every query uses, unique
panel ids, known template variables); every query parses (promtool, offline) and names only
series the stack exports (``KNOWN_METRICS``; ``tests/integration/test_dashboards.py`` checks
them against a real scrape). The Helm chart ships them as a ConfigMap for Grafana's sidecar,
read from these files (``kuberay/charts/welip/files/dashboards`` links here;
``tests/unit/test_chart.py`` checks the rendered ConfigMap).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO_ROOT / "configs" / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
PROMTOOL = REPO_ROOT / ".venv" / "prometheus" / "usr" / "bin" / "promtool"
PROMETHEUS = REPO_ROOT / ".venv" / "prometheus" / "usr" / "bin" / "prometheus"
DATASOURCE = "${datasource}"

# Every series a dashboard or alert rule may query, as Prometheus scrapes them from Ray's
# metrics endpoint (Ray prefixes ray_; counters end in _total, histograms in _bucket).
# WeLIP's own; Ray Serve's and vLLM's (ray.serve.llm's engine stats) as seen in a real scrape.
KNOWN_METRICS = frozenset(
    {
        "ray_welip_gateway_requests_total",
        "ray_welip_gateway_tokens_total",
        "ray_welip_gateway_rejections_total",
        "ray_welip_gateway_request_latency_s_bucket",
        "ray_welip_gateway_ttft_s_bucket",
        "ray_welip_gateway_cache_lookups_total",
        "ray_welip_audit_queue_depth",
        "ray_welip_audit_spool_depth",
        "ray_welip_audit_spool_bytes",
        "ray_welip_audit_dropped_records_total",
        "ray_welip_agent_runs_total",
        "ray_welip_agent_run_latency_s_bucket",
        "ray_welip_agent_node_latency_s_bucket",
        "ray_welip_agent_interrupts_total",
        "ray_welip_eval_samples_scored_total",
        "ray_welip_finetune_tokens_total",
        "ray_welip_finetune_tokens_per_s",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_deployment_request_counter_total",
        "ray_serve_replica_processing_queries",
        "ray_serve_num_http_requests_total",
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
        "ray_vllm_generation_tokens_total",
        "ray_vllm_prompt_tokens_total",
        "ray_vllm_request_success_total",
        "ray_vllm_time_to_first_token_seconds_bucket",
        "ray_vllm_inter_token_latency_seconds_bucket",
        "ray_vllm_request_queue_time_seconds_bucket",
        "ray_vllm_e2e_request_latency_seconds_bucket",
    }
)
EXPECTED_DASHBOARDS = {
    "welip-serving-overview.json",
    "welip-model.json",
    "welip-gateway-security.json",
    "welip-jobs.json",
}
# Grafana's own variables a query may use, with the values the tests put in their place.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}

_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool"})
_KEYWORDS |= {"and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end"}


def load_dashboard(path: Path) -> dict[str, Any]:
    """One dashboard's JSON model."""
    dashboard = json.loads(path.read_text())
    assert isinstance(dashboard, dict), f"{path.name}: not a JSON object"
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves left out."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """``(id, PromQL)`` of every panel target of one dashboard, as written (variables unsubstituted)."""
    return [
        (f"{path.stem}/{panel['id']}{target['refId']}", target["expr"])
        for panel in panels(load_dashboard(path))
        for target in panel.get("targets", [])
    ]


def all_dashboard_queries() -> list[tuple[str, str]]:
    return [query for path in DASHBOARD_FILES for query in dashboard_queries(path)]


def variables(expr: str) -> set[str]:
    """Names of the template variables an expression uses (``$x``, ``${x}``, ``${x:format}``)."""
    return {braced or plain for braced, plain in _VARIABLE.findall(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with its template variables replaced by ``values`` (Grafana's built-ins by default)."""
    values = {**BUILTIN_VARIABLES, **values}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no test value for template variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, ranges and grouping clauses are blanked out first; what remains
    is an identifier that is neither a keyword nor a function (followed by ``(``).
    """
    stripped = _STRING.sub('""', expr)
    assert "__name__" not in stripped, f"select by name, not by __name__: {expr!r}"
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    names = set()
    for match in _IDENTIFIER.finditer(stripped):
        name = match.group()
        if name.lower() in _KEYWORDS or stripped[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def run_promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """promtool (from Debian's prometheus package, unpacked by ``make install``), failing loudly if absent."""
    if not PROMTOOL.is_file():
        pytest.fail(
            f"{PROMTOOL} is missing: run `make install` (or `make {PROMTOOL.relative_to(REPO_ROOT)}`)"
        )
    return subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def ids(items: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in items]


QUERIES = all_dashboard_queries()


def test_the_dashboards_ship() -> None:
    assert {path.name for path in DASHBOARD_FILES} == EXPECTED_DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.name for p in DASHBOARD_FILES])
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["uid"] and dashboard["title"].startswith("WeLIP / ")
    assert "welip" in dashboard["tags"]
    templating = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert templating["datasource"]["type"] == "datasource"
    assert templating["datasource"]["query"] == "prometheus"
    found = panels(dashboard)
    assert found, f"{path.name}: no panels"
    ids_seen = [panel["id"] for panel in dashboard["panels"]] + [
        p["id"] for row in dashboard["panels"] for p in row.get("panels", [])
    ]
    assert len(ids_seen) == len(set(ids_seen)), f"{path.name}: panel ids repeat"
    for panel in found:
        where = f"{path.name}: panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, where
        assert panel["targets"], f"{where}: no queries"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{where}: wider than the dashboard"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, where
            used = variables(target["expr"]) - set(BUILTIN_VARIABLES)
            assert used <= set(templating), f"{where}: undefined variables {used - set(templating)}"


def test_dashboard_uids_are_unique() -> None:
    uids = [load_dashboard(path)["uid"] for path in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


def test_the_model_dashboard_selects_models() -> None:
    dashboard = load_dashboard(DASHBOARD_DIR / "welip-model.json")
    (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert model["includeAll"] and model["multi"] and model["allValue"] == ".*"
    assert all(
        "model" in variables(expr) for _, expr in dashboard_queries(DASHBOARD_DIR / "welip-model.json")
    )


@pytest.mark.parametrize(("name", "expr"), QUERIES, ids=ids(QUERIES))
def test_query_names_known_metrics(name: str, expr: str) -> None:
    names = metric_names(substitute(expr, {"model": "m"}))
    assert names, f"{name}: selects no metric"
    assert names <= KNOWN_METRICS, f"{name}: unknown metrics {sorted(names - KNOWN_METRICS)}"


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool checks PromQL offline: every query, variables substituted, as a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"welip_dashboard:query_{i}", "expr": substitute(expr, {"model": "m"})}
                    for i, (_, expr) in enumerate(QUERIES)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(QUERIES)} rules found" in result.stdout


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum(rate(a_total[5m]))", {"a_total"}),
        ('sum by (model, le) (rate(b_bucket{model=~"x|y", le!="+Inf"}[1m]))', {"b_bucket"}),
        ("histogram_quantile(0.99, sum(rate(c_bucket[5m])) by (le))", {"c_bucket"}),
        ('label_replace(d, "model", "$1", "model_name", "(.+)") > 0.9', {"d"}),
        ("e unless on (model_name) f and ignoring (x) g / on() group_left(y) h", {"e", "f", "g", "h"}),
        ("topk(10, i offset 5m) > 1e3 or vector(0)", {"i"}),
        ("max_over_time(j[1h:1m]) * bool 2", {"j"}),
        ("k:recorded:rate5m", {"k:recorded:rate5m"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_substitute() -> None:
    expr = 'rate(x{model=~"$model", k="${key:regex}"}[$__rate_interval]) offset $__range'
    assert substitute(expr, {"model": "m", "key": "k1"}) == 'rate(x{model=~"m", k="k1"}[1m]) offset 1h'
    with pytest.raises(KeyError, match="unknown"):
        substitute("x{a='$unknown'}", {})
