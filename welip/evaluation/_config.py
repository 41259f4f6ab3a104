"""Evaluation suite configuration: what to ask, whom to ask, how to score.

Keys follow lm-evaluation-harness's task YAML where they fit (``dataset_path``,
``doc_to_text``, ``doc_to_target``, ``doc_to_choice``, ``output_type``,
``num_fewshot``, ``generation_kwargs``, ``metric_list``); judges follow MLflow's
``make_judge`` (instructions with ``{{ inputs }}``, ``{{ outputs }}``,
``{{ expectations }}`` and a typed result). Everything here is inert: no file is read
and no endpoint called while a config validates.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from welip.config import StrictModel
from welip.evaluation._metrics import METRICS


class EndpointTarget(StrictModel):
    """An OpenAI-compatible endpoint: the WeLIP gateway, a bare ``vllm serve``, any API."""

    kind: Literal["endpoint"] = "endpoint"
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        pattern=r"^https?://",
        description="API root that `/chat/completions` and `/completions` hang off.",
    )
    model: str = Field(min_length=1, max_length=256, description="`model` sent with each request.")
    api_key_env: str | None = Field(
        "WELIP_API_KEY",
        description="Environment variable holding the API key (keys never live in configs); "
        "unset or empty: no Authorization header.",
    )
    max_concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at most.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of a 429, 5xx or connection error, with backoff."
    )
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First retry delay; doubles.")
    backoff_max_s: float = Field(20, gt=0, le=600, description="Longest delay between retries.")
    timeout_s: float = Field(120, gt=0, le=3600, description="Per-request timeout.")
    connect_timeout_s: float = Field(
        5, gt=0, le=120, description="Preflight and connect timeout: an unreachable endpoint fails fast."
    )
    batch_size: int = Field(
        4,
        ge=1,
        le=4096,
        description="Rows per Ray Data batch of the request stage; small batches, many in flight, "
        "keep max_concurrency requests going.",
    )


class BatchTarget(StrictModel):
    """In-job batch inference with ``ray.data.llm``'s vLLM processor: no server needed."""

    kind: Literal["batch"] = "batch"
    model: str = Field(min_length=1, max_length=256, description="Name the results carry.")
    source: str = Field(
        min_length=1,
        description="Packaged model name, local HF-format directory or s3:// URI (as in serving).",
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Where the engine runs.")
    cpus_per_engine: float = Field(1.0, gt=0, le=256, description="CPU engines: CPUs per engine bundle.")
    kv_cache_space_gib: int | None = Field(
        None, ge=1, le=1024, description="CPU engines only: VLLM_CPU_KVCACHE_SPACE."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments, passed through unchanged."
    )
    engines: int = Field(1, ge=1, le=1024, description="Engine replicas (data parallel).")
    batch_size: int = Field(64, ge=1, le=4096, description="Rows per batch sent to an engine.")
    stage_cpus: float = Field(
        0.25,
        gt=0,
        le=64,
        description="CPUs reserved per worker of the light stages (chat template, tokenize, "
        "detokenize, pre/post-processing); small, so the job fits beside a serving app.",
    )

    @model_validator(mode="after")
    def _cpu_only_options(self) -> BatchTarget:
        if self.accelerator == "gpu" and self.kv_cache_space_gib is not None:
            raise ValueError("kv_cache_space_gib applies to CPU engines only")
        return self


def _target_kind(value: Any) -> str | None:
    # `kind` may be left out: an endpoint is the common case.
    if isinstance(value, dict):
        return str(value.get("kind", "endpoint"))
    return getattr(value, "kind", None)


Target = Annotated[
    Annotated[EndpointTarget, Tag("endpoint")] | Annotated[BatchTarget, Tag("batch")],
    Discriminator(_target_kind),
]


class GenerationConfig(StrictModel):
    """Sampling for generated answers (OpenAI names; lm-eval's ``until`` is ``stop``)."""

    max_tokens: int = Field(256, ge=1, le=131072, description="Longest answer in tokens.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy: reproducible scores.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, max_length=16, description="Stop sequences.")
    seed: int | None = Field(None, ge=0, description="Sampling seed (default: the suite's seed).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="More request fields passed through (e.g. vLLM `structured_outputs`).",
    )


class JudgeConfig(StrictModel):
    """An LLM judge, shaped like MLflow's ``make_judge``.

    ``instructions`` is a Jinja2 template over ``inputs`` (the rendered prompt),
    ``outputs`` (the model's answer) and ``expectations`` (the rendered target); in
    pairwise mode ``output_a`` and ``output_b`` replace ``outputs``. The judge answers a
    JSON object ``{"result": ..., "rationale": "..."}``, forced into shape with vLLM's
    guided JSON when ``structured_output`` is on.
    """

    instructions: str = Field(min_length=1, max_length=20000, description="Judge prompt template.")
    feedback_type: Literal["bool", "int", "category"] = Field(
        "bool", description="Shape of `result`: yes/no, an integer scale, or one of `categories`."
    )
    scale_min: int = Field(1, ge=-1000, le=1000, description="int feedback: lowest score.")
    scale_max: int = Field(5, ge=-1000, le=1000, description="int feedback: highest score.")
    categories: dict[str, float] = Field(
        default_factory=dict, description="category feedback: each category and its score."
    )
    pairwise: bool = Field(
        False,
        description="Compare the answer with `baseline` instead of grading it alone; asked twice "
        "with positions swapped, an inconsistent verdict is a tie.",
    )
    baseline: str | None = Field(
        None, description="Pairwise only: Jinja2 template over the document giving the other answer."
    )
    target: EndpointTarget = Field(description="The judge model: any OpenAI-compatible endpoint.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Longest judge answer in tokens.")
    structured_output: bool = Field(
        True, description="Ask for the result's JSON schema (vLLM guided JSON, OpenAI json_schema)."
    )

    @model_validator(mode="after")
    def _shape(self) -> JudgeConfig:
        names = set(re.findall(r"{{\s*(\w+)", self.instructions))
        needed = {"output_a", "output_b"} if self.pairwise else {"outputs"}
        if not needed <= names:
            missing = ", ".join(sorted(needed - names))
            raise ValueError(f"judge instructions must use {missing}")
        if self.pairwise and not self.baseline:
            raise ValueError("a pairwise judge needs `baseline`, the answer to compare with")
        if not self.pairwise and self.baseline:
            raise ValueError("`baseline` applies to pairwise judges only")
        if self.pairwise and self.feedback_type != "category":
            raise ValueError("a pairwise judge answers a category (A, B or tie): set feedback_type")
        if self.feedback_type == "int" and self.scale_min >= self.scale_max:
            raise ValueError("scale_min must be below scale_max")
        if self.feedback_type == "category" and not self.pairwise and len(self.categories) < 2:
            raise ValueError("category feedback needs at least two `categories` with their scores")
        return self


class MetricSpec(StrictModel):
    """One entry of ``metric_list``: a metric function, or a judge."""

    metric: str = Field(description="A rule-based metric name (see METRICS) or `judge`.")
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Reported name; default `metric`."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Options of the metric function.")
    reference: str | None = Field(
        None, description="Jinja2 template for this metric's reference; default doc_to_target."
    )
    judge: JudgeConfig | None = Field(None, description="Required when metric is `judge`.")
    higher_is_better: bool = Field(True, description="Direction, for comparisons.")

    @property
    def label(self) -> str:
        return self.name or self.metric

    @model_validator(mode="after")
    def _known(self) -> MetricSpec:
        if self.metric == "judge":
            if self.judge is None:
                raise ValueError("metric `judge` needs a `judge` section")
            if self.kwargs:
                raise ValueError("a judge takes no kwargs")
            return self
        if self.judge is not None:
            raise ValueError(f"`judge` applies to metric `judge`, not {self.metric!r}")
        metric = METRICS.get(self.metric)
        if metric is None:
            raise ValueError(f"unknown metric {self.metric!r}; known: {', '.join(sorted(METRICS))}, judge")
        unknown = set(self.kwargs) - set(metric.options)
        if unknown:
            raise ValueError(f"metric {self.metric!r} has no option {', '.join(sorted(unknown))}")
        return self


class MLflowConfig(StrictModel):
    """Where a run is tracked. The tracking URI comes from ``MLFLOW_TRACKING_URI``."""

    enabled: bool = Field(True, description="Log a run (params, metrics, artifacts).")
    experiment: str = Field("welip-eval", min_length=1, max_length=256, description="Experiment name.")


class SuiteConfig(StrictModel):
    """One evaluation suite (``configs/eval/<suite>.yaml``)."""

    task: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Suite name.")
    description: str = Field("", max_length=2000, description="What the suite measures.")
    dataset_path: str = Field(
        min_length=1, description="jsonl, csv or parquet file: local path or s3:// URI."
    )
    dataset_format: Literal["jsonl", "csv", "parquet"] | None = Field(
        None, description="Default: from the file suffix."
    )
    id_field: str | None = Field("id", description="Column naming each row; missing: the row number.")
    output_type: Literal["generate_until", "multiple_choice"] = Field(
        "generate_until",
        description="Generate an answer, or pick the choice with the highest log-likelihood "
        "(completions endpoint with logprobs).",
    )
    mode: Literal["chat", "completion"] = Field(
        "chat", description="generate_until: chat messages or a raw completion prompt."
    )
    system_prompt: str | None = Field(None, max_length=20000, description="Chat mode: system message.")
    doc_to_text: str = Field(min_length=1, description="Jinja2 template: the question.")
    doc_to_target: str = Field(
        min_length=1, description="Jinja2 template: the reference answer (multiple_choice: its index)."
    )
    doc_to_choice: str | None = Field(
        None, description="multiple_choice: Jinja2 expression giving the list of choices."
    )
    target_delimiter: str = Field(" ", max_length=16, description="Between question and answer text.")
    fewshot_delimiter: str = Field("\n\n", max_length=16, description="Between few-shot examples.")
    num_fewshot: int = Field(0, ge=0, le=64, description="Solved examples put before each question.")
    fewshot_path: str | None = Field(
        None, description="Few-shot pool; default: the suite's own rows, never the row itself."
    )
    generation_kwargs: GenerationConfig = Field(default_factory=GenerationConfig)
    metric_list: list[MetricSpec] = Field(min_length=1, max_length=64)
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N rows.")
    seed: int = Field(1234, ge=0, description="Few-shot sampling, generation and bootstrap seed.")
    target: Target = Field(description="The model under evaluation.")
    storage_url: str | None = Field(
        None, description="Where results go; default WELIP_STORAGE_URL or ~/.welip/artifacts."
    )
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    record_db: bool = Field(True, description="Add a row to `eval_runs` in WELIP_DATABASE_URL.")
    run_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="Id of the run (32 hex digits), chosen by a caller that needs to find it again "
        "(`welip promote`); default: a new one.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SuiteConfig:
        labels = [m.label for m in self.metric_list]
        if len(set(labels)) != len(labels):
            raise ValueError("metric names must be unique (set `name` on repeated metrics)")
        if self.output_type == "multiple_choice":
            if not self.doc_to_choice:
                raise ValueError("multiple_choice needs doc_to_choice")
            if not isinstance(self.target, EndpointTarget):
                raise ValueError(
                    "multiple_choice scores choices by log-likelihood over /v1/completions: "
                    "use an endpoint target"
                )
            if any(m.metric != "acc" for m in self.metric_list):
                raise ValueError("multiple_choice suites report `acc` only")
        elif any(m.metric == "acc" for m in self.metric_list):
            raise ValueError("metric `acc` needs output_type multiple_choice")
        if self.system_prompt is not None and self.mode != "chat":
            raise ValueError("system_prompt applies to chat mode only")
        return self

    @property
    def model(self) -> str:
        return self.target.model

    @property
    def endpoints(self) -> list[EndpointTarget]:
        """Every endpoint the suite calls: the target (when it is one), then each judge's."""
        targets = [self.target] if isinstance(self.target, EndpointTarget) else []
        return targets + [m.judge.target for m in self.metric_list if m.judge is not None]
