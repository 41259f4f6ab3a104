"""Evaluation: suites over Ray Data, rule-based metrics to LLM judges, tracked in MLflow.

Metric functions are plain functions (``exact_match(prediction, reference)``) usable
anywhere, fine-tuning rewards included. :func:`run_suite` composes the rest into one run
(render the suite, check endpoints, infer, score, judge, record); ``jobs/evaluate.py``
runs it as a Ray Job.
"""

from welip.evaluation._client import EndpointUnavailable, check_endpoint, endpoint_version
from welip.evaluation._compare import MetricComparison, compare_samples, comparison_table
from welip.evaluation._config import (
    BatchTarget,
    EndpointTarget,
    GenerationConfig,
    JudgeConfig,
    MetricSpec,
    MLflowConfig,
    SuiteConfig,
)
from welip.evaluation._dataset import Dataset, Document, Malformed, load_dataset
from welip.evaluation._judge import Feedback, pairwise_score, parse_feedback, result_schema
from welip.evaluation._metrics import (
    METRICS,
    Metric,
    acc,
    bleu,
    contains,
    exact_match,
    extract_number,
    json_match,
    json_schema,
    json_valid,
    numeric_match,
    regex_match,
    rouge_l,
    token_f1,
)
from welip.evaluation._prompts import Prompter, template_hash
from welip.evaluation._results import (
    log_mlflow,
    read_samples,
    summarize,
    summary_table,
    write_results,
)
from welip.evaluation._run import run_suite
from welip.evaluation._stages import EndpointInference, JudgeStage, batch_processor, score_batch

__all__ = [
    "METRICS",
    "BatchTarget",
    "Dataset",
    "Document",
    "EndpointInference",
    "EndpointTarget",
    "EndpointUnavailable",
    "Feedback",
    "GenerationConfig",
    "JudgeConfig",
    "JudgeStage",
    "MLflowConfig",
    "Malformed",
    "Metric",
    "MetricComparison",
    "MetricSpec",
    "Prompter",
    "SuiteConfig",
    "acc",
    "batch_processor",
    "bleu",
    "check_endpoint",
    "compare_samples",
    "comparison_table",
    "contains",
    "endpoint_version",
    "exact_match",
    "extract_number",
    "json_match",
    "json_schema",
    "json_valid",
    "load_dataset",
    "log_mlflow",
    "numeric_match",
    "pairwise_score",
    "parse_feedback",
    "read_samples",
    "regex_match",
    "result_schema",
    "rouge_l",
    "run_suite",
    "score_batch",
    "summarize",
    "summary_table",
    "template_hash",
    "token_f1",
    "write_results",
]
