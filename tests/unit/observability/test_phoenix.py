"""Phoenix, the tests' OTLP receiver: spans exported with the plain OTel SDK come back intact.

A real Phoenix server (no Ray). These tests fail, not skip, when it cannot start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

from tests import phoenix_server
from tests.phoenix_server import PhoenixServer, list_projects, spans_of_trace, start_phoenix


def export_tree(exporter: SpanExporter, resource: dict[str, str]) -> int:
    """A request span with an LLM child, through a local provider (not the global one); its trace id."""
    provider = TracerProvider(resource=Resource.create(resource))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.phoenix")
    chain_attributes = {"openinference.span.kind": "CHAIN"}
    llm_attributes: dict[str, str | int] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": "smollm2-135m-instruct",
        "llm.token_count.prompt": 7,
    }
    with (
        tracer.start_as_current_span("gateway.request", attributes=chain_attributes) as root,
        tracer.start_as_current_span("llm.generate", attributes=llm_attributes),
    ):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()
    return root.get_span_context().trace_id


def test_otlp_http_tree_comes_back_by_trace_id_in_its_project(phoenix: PhoenixServer) -> None:
    exporter = HttpSpanExporter(endpoint=f"{phoenix.otlp_http_endpoint}/v1/traces")
    trace_id = export_tree(exporter, {"service.name": "welip", "openinference.project.name": "welip-test"})

    spans = spans_of_trace(phoenix.url, trace_id, min_spans=2)

    assert [span["name"] for span in spans] == ["gateway.request", "llm.generate"]
    root, child = spans
    assert {span["trace_id"] for span in spans} == {format(trace_id, "032x")}
    assert root["parent_id"] is None
    assert child["parent_id"] == root["span_id"]
    assert (root["span_kind"], child["span_kind"]) == ("CHAIN", "LLM")
    assert child["attributes"]["llm.token_count.prompt"] == 7
    assert child["attributes"]["llm.model_name"] == "smollm2-135m-instruct"
    assert {span["project"] for span in spans} == {"welip-test"}
    assert spans_of_trace(phoenix.url, trace_id, project="welip-test", min_spans=2) == spans


def test_otlp_grpc_without_project_attribute_lands_in_default(phoenix: PhoenixServer) -> None:
    exporter = GrpcSpanExporter(endpoint=phoenix.otlp_grpc_endpoint, insecure=True)
    trace_id = export_tree(exporter, {"service.name": "welip-grpc"})

    spans = spans_of_trace(phoenix.url, trace_id, min_spans=2)

    assert [span["name"] for span in spans] == ["gateway.request", "llm.generate"]
    assert spans[1]["parent_id"] == spans[0]["span_id"]
    # service.name names no project: without openinference.project.name it is "default".
    assert {span["project"] for span in spans} == {"default"}
    assert "welip-grpc" not in list_projects(phoenix.url)


def test_start_fails_loudly_when_phoenix_exits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phoenix_server, "PHOENIX_BIN", Path("/bin/false"))
    with pytest.raises(RuntimeError, match="Phoenix exited with 1"), start_phoenix(tmp_path):
        pass
