"""Ray Data stages of an evaluation: inference (endpoint or in-job vLLM), scoring, judging.

Each row carries one sample as a JSON string in the ``sample`` column: samples are
ragged (messages, choices, per-metric references), and one string column keeps Arrow
out of their shape. Stages decode, add their part and encode again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from opentelemetry import trace

from welip.evaluation._client import Endpoint, RequestFailed
from welip.evaluation._config import BatchTarget, EndpointTarget, GenerationConfig, MetricSpec
from welip.evaluation._judge import run_judge
from welip.evaluation._metrics import METRICS, acc
from welip.observability import extract_context, setup_tracing

Batch = dict[str, np.ndarray]


def decode(batch: Batch) -> list[dict[str, Any]]:
    return [json.loads(s) for s in batch["sample"]]


def encode(samples: list[dict[str, Any]]) -> Batch:
    return {"sample": np.array([json.dumps(s, ensure_ascii=False) for s in samples], dtype=object)}


def sampling(generation: GenerationConfig, seed: int) -> dict[str, Any]:
    """The request's sampling fields (OpenAI names; vLLM's ``SamplingParams`` share them)."""
    params: dict[str, Any] = {
        "max_tokens": generation.max_tokens,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "seed": generation.seed if generation.seed is not None else seed,
    }
    if generation.stop:
        params["stop"] = list(generation.stop)
    return params


def loglikelihoods(answer: dict[str, Any], context: str, prompts: list[str]) -> list[float]:
    """Sum of the continuation tokens' logprobs for each prompt of an ``echo`` completion.

    A token belongs to the continuation when its text offset lies in
    ``[len(context), len(prompt))``: prompt tokens from the context's end on, not the
    token generated after the prompt.
    """
    by_index = {c["index"]: c for c in answer["choices"]}
    out = []
    for i, prompt in enumerate(prompts):
        logprobs = by_index[i].get("logprobs") or {}
        offsets, values = logprobs.get("text_offset") or [], logprobs.get("token_logprobs") or []
        if not offsets:
            raise ValueError("the endpoint returned no prompt logprobs (does it support echo?)")
        out.append(
            sum(v for off, v in zip(offsets, values, strict=False) if len(context) <= off < len(prompt) and v)
        )
    return out


_tracer = trace.get_tracer("welip.evaluation")
_scored: Any = None


def batch_span(name: str, trace_context: dict[str, str] | None, samples: int) -> Any:
    """A span for one Ray Data batch, a child of the job's span (``trace_context``: its carrier)."""
    return _tracer.start_as_current_span(
        name,
        context=extract_context(trace_context),
        attributes={"openinference.span.kind": "CHAIN", "welip.batch.samples": samples},
    )


def _samples_scored() -> Any:
    global _scored
    if _scored is None:  # once per worker process
        from ray.util import metrics

        _scored = metrics.Counter(
            "welip_eval_samples_scored",
            description="Evaluation samples scored (with an answer), by suite and model.",
            tag_keys=("suite", "model"),
        )
    return _scored


class EndpointInference:
    """Ray Data UDF: sends each sample to an OpenAI-compatible endpoint, concurrently.

    ``trace_context``: the job span's carrier; each batch is a span under it, and the
    endpoint's spans (a WeLIP gateway's) join the batch's trace.
    """

    def __init__(
        self,
        target: EndpointTarget,
        generation: GenerationConfig,
        seed: int,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        setup_tracing("eval")
        self._target, self._generation, self._seed = target, generation, seed
        self._trace_context = trace_context
        self._endpoint: Endpoint | None = None

    async def _one(self, endpoint: Endpoint, sample: dict[str, Any]) -> dict[str, Any]:
        try:
            if sample["kind"] == "choice":
                prompts = [sample["context"] + c for c in sample["continuations"]]
                body = {
                    "model": self._target.model,
                    "prompt": prompts,
                    "max_tokens": 1,
                    "temperature": 0,
                    "echo": True,
                    "logprobs": 1,
                }
                answer, latency_ms = await endpoint.post("completions", body)
                scores = loglikelihoods(answer, sample["context"], prompts)
                sample.update(loglikelihoods=scores, output=sample["choices"][int(np.argmax(scores))])
            else:
                body = {"model": self._target.model, **sampling(self._generation, self._seed)}
                body.update(self._generation.extra_body)
                if "messages" in sample:
                    answer, latency_ms = await endpoint.post(
                        "chat/completions", {**body, "messages": sample["messages"]}
                    )
                    choice = answer["choices"][0]
                    sample["output"] = choice["message"].get("content") or ""
                else:
                    answer, latency_ms = await endpoint.post(
                        "completions", {**body, "prompt": sample["prompt"]}
                    )
                    choice = answer["choices"][0]
                    sample["output"] = choice.get("text") or ""
                sample["finish_reason"] = choice.get("finish_reason")
            sample.update(usage=answer.get("usage"), latency_ms=round(latency_ms, 2))
        except (RequestFailed, ValueError, KeyError, IndexError) as exc:
            sample.update(output=None, error=f"{type(exc).__name__}: {exc}")
        return sample

    async def __call__(self, batch: Batch) -> Batch:
        if self._endpoint is None:  # on the UDF's own event loop
            self._endpoint = Endpoint(self._target)
        endpoint, todo = self._endpoint, decode(batch)
        with batch_span("eval.inference_batch", self._trace_context, len(todo)) as span:
            samples = await asyncio.gather(*(self._one(endpoint, s) for s in todo))
            span.set_attribute("welip.batch.errors", sum(1 for s in samples if s.get("error")))
        return encode(list(samples))


def batch_processor(target: BatchTarget, generation: GenerationConfig, seed: int, chat: bool) -> Any:
    """A ``ray.data.llm`` vLLM processor for in-job inference over the ``sample`` column."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from welip.models import resolve_model_path

    params = sampling(generation, seed)
    extra = dict(generation.extra_body)
    structured = extra.pop("structured_outputs", None)
    if extra:
        raise ValueError(f"batch mode passes only structured_outputs from extra_body, not {sorted(extra)}")
    if structured is not None:
        params["structured_outputs"] = structured
    if target.accelerator == "cpu":
        bundles: list[dict[str, float]] = [{"CPU": target.cpus_per_engine}]
        env = {"VLLM_CPU_KVCACHE_SPACE": str(target.kv_cache_space_gib)} if target.kv_cache_space_gib else {}
    else:
        tp = int(target.engine_kwargs.get("tensor_parallel_size", 1))
        bundles, env = [{"GPU": 1, "CPU": 1} for _ in range(tp)], {}
    config = vLLMEngineProcessorConfig(
        # Resolved on the driver's node (packaged models are converted into its cache);
        # on a multi-node cluster use a shared path or an s3:// source that every node reaches.
        model_source=resolve_model_path(target.source),
        engine_kwargs=dict(target.engine_kwargs),
        batch_size=target.batch_size,
        concurrency=target.engines,
        placement_group_config={"bundles": bundles, "strategy": "PACK"},
        runtime_env={"env_vars": env} if env else None,
        chat_template_stage={"enabled": chat, "num_cpus": target.stage_cpus},
        tokenize_stage={"num_cpus": target.stage_cpus},
        detokenize_stage={"num_cpus": target.stage_cpus},
        log_engine_metrics=False,
    )

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        sample = json.loads(row["sample"])
        request: dict[str, Any] = {"sample": row["sample"], "sampling_params": params}
        if chat:
            request["messages"] = sample["messages"]
        else:
            request["prompt"] = sample["prompt"]
        return request

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        sample = json.loads(row["sample"])
        sample.update(
            output=row["generated_text"],
            usage={
                "prompt_tokens": int(row["num_input_tokens"]),
                "completion_tokens": int(row["num_generated_tokens"]),
            },
        )
        return {"sample": json.dumps(sample, ensure_ascii=False)}

    light = {"num_cpus": target.stage_cpus}
    return build_processor(
        config,
        preprocess=preprocess,
        postprocess=postprocess,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )


def score_batch(
    batch: Batch,
    metrics: list[MetricSpec],
    suite: str = "",
    model: str = "",
    trace_context: dict[str, str] | None = None,
) -> Batch:
    """Ray Data UDF: every rule-based metric of every sample that has an answer.

    Counts the answered samples in ``welip_eval_samples_scored`` (``suite``, ``model``).
    """
    samples = decode(batch)
    setup_tracing("eval")
    with batch_span("eval.score_batch", trace_context, len(samples)):
        _score(samples, metrics)
    answered = sum(1 for s in samples if s.get("output") is not None)
    if answered:
        _samples_scored().inc(answered, tags={"suite": suite, "model": model})
    return encode(samples)


def _score(samples: list[dict[str, Any]], metrics: list[MetricSpec]) -> None:
    for sample in samples:
        scores: dict[str, float | None] = {}
        for spec in metrics:
            if spec.metric == "judge":
                continue
            if sample.get("output") is None:
                scores[spec.label] = None
            elif spec.metric == "acc":
                scores[spec.label] = acc(sample["loglikelihoods"], sample["gold"])
            else:
                fn = METRICS[spec.metric].fn
                try:
                    scores[spec.label] = fn(sample["output"], sample["references"][spec.label], **spec.kwargs)
                except (ValueError, TypeError) as exc:  # e.g. a reference that is not valid JSON
                    scores[spec.label] = None
                    sample.setdefault("metric_errors", {})[spec.label] = str(exc)
        sample["scores"] = scores


class JudgeStage:
    """Ray Data UDF: runs one suite's judges over every answered sample."""

    def __init__(self, metrics: list[MetricSpec], trace_context: dict[str, str] | None = None) -> None:
        setup_tracing("eval")
        self._trace_context = trace_context
        self._judges = [(m, m.judge) for m in metrics if m.judge is not None]
        self._endpoints: dict[str, Endpoint] = {}

    async def _one(self, sample: dict[str, Any]) -> dict[str, Any]:
        verdicts = sample.setdefault("judgements", {})
        for spec, judge in self._judges:
            if sample.get("output") is None:
                verdicts[spec.label] = {"value": None, "error": "no answer to judge", "failure": None}
                sample["scores"][spec.label] = None
                continue
            if spec.label not in self._endpoints:  # one client (and one concurrency bound) per judge
                self._endpoints[spec.label] = Endpoint(judge.target)
            endpoint = self._endpoints[spec.label]
            verdict = await run_judge(
                judge,
                endpoint,
                inputs=sample["inputs"],
                outputs=sample["output"],
                expectations=sample["target"],
                baseline=sample["judges"][spec.label]["baseline"],
            )
            verdicts[spec.label] = verdict
            sample["scores"][spec.label] = verdict["value"]
        return sample

    async def __call__(self, batch: Batch) -> Batch:
        todo = decode(batch)
        with batch_span("eval.judge_batch", self._trace_context, len(todo)):
            samples = await asyncio.gather(*(self._one(s) for s in todo))
        return encode(list(samples))
