"""Results of an evaluation run: summary, files in storage, MLflow run, table to print."""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from typing import Any

from welip.evaluation._config import SuiteConfig
from welip.evaluation._dataset import Malformed
from welip.store import join_url, read_bytes, use_mlflow, write_bytes


def summarize(
    cfg: SuiteConfig, samples: list[dict[str, Any]], malformed: list[Malformed], n_rows: int
) -> dict[str, Any]:
    """Per-metric mean and standard error over the samples that have a score, and counts.

    Every row of the file is accounted for: scored, failed at inference (``errors``),
    or ``malformed``. Judges also report their parse and request failures.
    """
    metrics: dict[str, dict[str, Any]] = {}
    for spec in cfg.metric_list:
        values = [s["scores"][spec.label] for s in samples if s.get("scores", {}).get(spec.label) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        stderr = None
        if n > 1 and mean is not None:
            stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
        entry: dict[str, Any] = {
            "mean": mean,
            "stderr": stderr,
            "n": n,
            "higher_is_better": spec.higher_is_better,
        }
        if spec.judge is not None:
            verdicts = [s.get("judgements", {}).get(spec.label, {}) for s in samples]
            parse = sum(1 for v in verdicts if v.get("failure") == "parse")
            request = sum(1 for v in verdicts if v.get("failure") == "request")
            judged = sum(1 for v in verdicts if v.get("failure") is not None or v.get("value") is not None)
            entry.update(
                parse_failures=parse,
                parse_failure_rate=parse / judged if judged else None,
                request_failures=request,
            )
            if spec.judge.pairwise:
                flags = [
                    v.get("position_consistent") for v in verdicts if v.get("position_consistent") is not None
                ]
                entry["position_consistency"] = sum(flags) / len(flags) if flags else None
        metrics[spec.label] = entry
    errors = [{"id": s["id"], "row": s["row"], "error": s["error"]} for s in samples if s.get("error")]
    return {
        "task": cfg.task,
        "model": cfg.model,
        "target_kind": cfg.target.kind,
        "rows": n_rows,
        "samples": len(samples),
        "scored": len(samples) - len(errors),
        "errors": len(errors),
        "malformed": len(malformed),
        "metrics": metrics,
        "error_rows": errors,
        "malformed_rows": [m.as_dict() for m in malformed],
    }


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Summary numbers as flat MLflow metric names (``exact_match``, ``judge.parse_failures``)."""
    out: dict[str, float] = {}
    for label, entry in summary["metrics"].items():
        for key, value in entry.items():
            if key == "higher_is_better" or value is None:
                continue
            out[label if key == "mean" else f"{label}.{key}"] = float(value)
    for key in ("samples", "scored", "errors", "malformed"):
        out[f"rows.{key}"] = float(summary[key])
    out["samples_per_s"] = float(summary.get("samples_per_s", 0.0))
    return out


def write_results(
    run_url: str, samples: list[dict[str, Any]], summary: dict[str, Any], cfg: SuiteConfig
) -> None:
    """``samples.jsonl``, ``summary.json`` and ``suite.json`` under ``run_url``."""
    lines = "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in samples)
    write_bytes(join_url(run_url, "samples.jsonl"), lines.encode())
    write_bytes(join_url(run_url, "summary.json"), json.dumps(summary, indent=2, ensure_ascii=False).encode())
    write_bytes(join_url(run_url, "suite.json"), cfg.model_dump_json(indent=2).encode())


def read_samples(run_url: str) -> list[dict[str, Any]]:
    """The per-sample records a run wrote."""
    text = read_bytes(join_url(run_url, "samples.jsonl")).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _flat_params(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flat_params(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        text = json.dumps(value) if not isinstance(value, str) else value
        out[prefix] = text[:6000]  # MLflow's param value limit


def log_mlflow(
    cfg: SuiteConfig,
    summary: dict[str, Any],
    samples: list[dict[str, Any]],
    tags: dict[str, str],
    run_name: str,
) -> str:
    """One MLflow run with params, metrics, tags, the dataset and the result files; its id.

    The tracking URI is ``MLFLOW_TRACKING_URI`` (default: a local SQLite store under
    ``~/.welip``).
    """
    import mlflow
    import mlflow.data.pandas_dataset
    import pandas as pd

    use_mlflow(cfg.mlflow.experiment)
    params: dict[str, str] = {}
    # The judge's endpoint (and its key variable name) are config too: params show it all.
    _flat_params("", cfg.model_dump(mode="json", exclude={"metric_list"}), params)
    params["metric_list"] = json.dumps([m.model_dump(mode="json") for m in cfg.metric_list])[:6000]
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(flat_metrics(summary))
        mlflow.set_tags(tags)
        frame = pd.DataFrame([{"id": s["id"], "inputs": s["inputs"], "target": s["target"]} for s in samples])
        with warnings.catch_warnings():  # MLflow finds two equal readers of a local path and says so
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.pandas_dataset.from_pandas(
                frame, source=cfg.dataset_path, name=cfg.task, digest=tags["dataset_sha256"][:36]
            )
        mlflow.log_input(dataset, context="evaluation")
        with tempfile.TemporaryDirectory() as tmp:
            write_results(tmp, samples, summary, cfg)
            mlflow.log_artifacts(tmp)
        return str(run.info.run_id)


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a plain text table, for job logs."""
    rows: list[tuple[str, ...]] = [("metric", "value", "stderr", "n")]
    for label, entry in summary["metrics"].items():
        mean, stderr = entry["mean"], entry["stderr"]
        rows.append(
            (
                label,
                "-" if mean is None else f"{mean:.4f}",
                "-" if stderr is None else f"{stderr:.4f}",
                str(entry["n"]),
            )
        )
        if "parse_failures" in entry:
            rows.append((f"{label}.parse_failures", str(entry["parse_failures"]), "", ""))
    counts = (
        f"{summary['task']} on {summary['model']} ({summary['target_kind']}): {summary['rows']} rows, "
        f"{summary['scored']} scored, {summary['errors']} failed, {summary['malformed']} malformed"
    )
    return "\n".join([counts, text_table(rows)])


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned columns; the first row is the header, underlined."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
