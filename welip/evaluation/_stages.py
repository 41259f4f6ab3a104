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

from welip.evaluation._client import Endpoint, RequestFailed
from welip.evaluation._config import BatchTarget, EndpointTarget, GenerationConfig, MetricSpec
from welip.evaluation._judge import run_judge
from welip.evaluation._metrics import METRICS, acc

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


class EndpointInference:
    """Ray Data UDF: sends each sample to an OpenAI-compatible endpoint, concurrently."""

    def __init__(self, target: EndpointTarget, generation: GenerationConfig, seed: int) -> None:
        self._target, self._generation, self._seed = target, generation, seed
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
        samples = await asyncio.gather(*(self._one(self._endpoint, s) for s in decode(batch)))
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


def score_batch(batch: Batch, metrics: list[MetricSpec]) -> Batch:
    """Ray Data UDF: every rule-based metric of every sample that has an answer."""
    samples = decode(batch)
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
    return encode(samples)


class JudgeStage:
    """Ray Data UDF: runs one suite's judges over every answered sample."""

    def __init__(self, metrics: list[MetricSpec]) -> None:
        self._judges = [m for m in metrics if m.judge is not None]
        self._endpoints: dict[str, Endpoint] = {}

    async def _one(self, sample: dict[str, Any]) -> dict[str, Any]:
        verdicts = sample.setdefault("judgements", {})
        for spec in self._judges:
            judge = spec.judge
            assert judge is not None
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
        samples = await asyncio.gather(*(self._one(s) for s in decode(batch)))
        return encode(list(samples))
