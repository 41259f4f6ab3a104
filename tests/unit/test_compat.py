"""Every private name WeLIP takes from a dependency still exists where the adapter looks.

An upgrade that moves one fails here, not on the first request after a deploy.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from welip._compat import ray as ray_compat
from welip._compat import vllm as vllm_compat

ROOT = Path(__file__).resolve().parents[2]


def test_ray_private_names_import_and_work() -> None:
    info = ray_compat.RawRequestInfo(headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert info.headers["traceparent"].startswith("00-")
    assert inspect.isclass(ray_compat.DiskMultiplexConfig)
    assert callable(ray_compat.global_id_manager.next)
    ray_compat.enable_token_auth_if_available()  # resolves Ray's private function and runs it


def test_ray_request_info_is_what_llm_server_takes() -> None:
    from ray.serve.llm import LLMServer

    annotation = str(inspect.signature(LLMServer.chat).parameters["raw_request_info"].annotation)
    assert "RawRequestInfo" in annotation


def test_vllm_stream_options_carries_include_usage() -> None:
    assert vllm_compat.StreamOptions(include_usage=True).include_usage is True


def test_no_private_import_outside_the_adapters() -> None:
    """Only welip/_compat/ may import a dependency's private module."""
    offenders = []
    for folder in ("welip", "deployments", "jobs"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name == "_compat":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    private = any(part.startswith("_") for part in name.split(".")[1:])
                    vllm_internal = name.startswith("vllm.")
                    if not name.startswith("welip") and (private or vllm_internal):
                        offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_vllm_client_error_is_what_its_request_validators_raise() -> None:
    from vllm.exceptions import VLLMValidationError

    assert issubclass(VLLMValidationError, vllm_compat.VLLMClientError)
    assert VLLMValidationError("x", parameter="n").parameter == "n"
