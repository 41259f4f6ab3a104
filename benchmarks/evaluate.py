"""Evaluation benchmark: WeLIP's evaluation job against lm-evaluation-harness, same endpoint.

    python benchmarks/evaluate.py                      # arithmetic suite x5, 2 rounds
    python benchmarks/evaluate.py --repeat 10 --rounds 3
    python benchmarks/evaluate.py --dry-run            # print the commands, start nothing

One local WeLIP stack (``serve run configs/serve/local.yaml``) serves SmolLM2; the same
prompts go to its ``/v1/chat/completions`` from

* ``welip``: ``python jobs/evaluate.py`` (Ray Data, ``target.max_concurrency`` in flight),
  connected to the stack's Ray cluster as ``ray job submit`` would run it;
* ``lm-eval``: ``lm_eval --model local-chat-completions --apply_chat_template`` with a
  task YAML over the same local file, at its default ``num_concurrent=1``;
* ``lm-eval-c<N>``: the same with ``num_concurrent`` equal to WeLIP's concurrency.

Prompts are identical (one user message, no system prompt), decoding greedy with the
same ``max_tokens``, stop string and seed, so the answers must agree: the script
compares them per document, and WeLIP's ``numeric_match`` with lm-eval's
``exact_match`` behind a last-number regex filter. Samples/s is documents over the
whole command's wall time (start-up, inference, scoring, writing results).

lm-evaluation-harness runs from its own virtualenv (``--lm-eval``, default
``.venv-lmeval/bin/lm_eval``; ``make bench-eval`` creates it), so its dependencies
never touch WeLIP's. Output: a table, ``benchmarks/results/evaluate-<stamp>.json``,
and logs in ``benchmarks/results/evaluate-<stamp>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as serving_bench  # benchmarks/serve.py: starts and stops the stack

REPO = serving_bench.REPO
RESULTS_DIR = serving_bench.RESULTS_DIR
SUITE = REPO / "configs" / "eval" / "arithmetic.yaml"
CONFIG = REPO / "configs" / "serve" / "local.yaml"
BASE_URL = "http://127.0.0.1:8000"
STOP = "\n\n"
# lm-eval's regex filter: the last number in the answer, as WeLIP's numeric_match takes it.
LAST_NUMBER = r"(-?[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?)"
RUN_TIMEOUT_S = 1800


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="Copies of the suite's rows (distinct ids).")
    parser.add_argument("--rounds", type=int, default=2, help="Measured rounds (order alternates).")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="WeLIP's max_concurrency, lm-eval-c<N>'s."
    )
    parser.add_argument("--lm-eval", default=str(REPO / ".venv-lmeval" / "bin" / "lm_eval"))
    parser.add_argument("--dry-run", action="store_true")
    return parser.parse_args(argv)


def write_inputs(work_dir: Path, repeat: int) -> tuple[Path, Path, dict[str, Any]]:
    """The repeated dataset, and an lm-eval task YAML with the suite's prompt over it."""
    suite = yaml.safe_load(SUITE.read_text())
    rows = [json.loads(line) for line in (REPO / suite["dataset_path"]).read_text().splitlines() if line]
    data = work_dir / "arithmetic-x.jsonl"
    with data.open("w") as f:
        for copy in range(repeat):
            for row in rows:
                f.write(json.dumps({**row, "id": f"{row['id']}-{copy}"}) + "\n")
    max_tokens = suite["generation_kwargs"]["max_tokens"]
    task_dir = work_dir / "lm_eval_tasks"
    task_dir.mkdir()
    task = {
        "task": "welip_arithmetic",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": suite["doc_to_text"],
        "doc_to_target": suite["doc_to_target"],
        "generation_kwargs": {
            "until": [STOP],
            "max_gen_toks": max_tokens,
            "temperature": 0,
            "do_sample": False,
        },
        "filter_list": [
            {
                "name": "last_number",
                "filter": [
                    {"function": "regex", "regex_pattern": LAST_NUMBER, "group_select": -1},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (task_dir / "welip_arithmetic.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return data, task_dir, suite


def welip_command(data: Path, out: Path, concurrency: int, model: str) -> serving_bench.Command:
    """The job as a user runs it beside the stack; one MLflow store shared by every run."""
    overrides = [
        f"dataset_path={data}",
        f"target.base_url={BASE_URL}/v1",
        f"target.model={model}",
        f"target.max_concurrency={concurrency}",
        f"generation_kwargs.stop={json.dumps([STOP])}",
        f"storage_url={out}",
        "record_db=false",
    ]
    # No RAY_ADDRESS: the job finds the stack's local cluster itself (and its auth token).
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{out.parent}/mlflow.db",
        "WELIP_API_KEY": "",
    }
    return serving_bench.Command(
        [sys.executable, "jobs/evaluate.py", "--config", str(SUITE), *overrides], env
    )


def lm_eval_command(
    lm_eval: str, task_dir: Path, out: Path, concurrency: int, model: str
) -> serving_bench.Command:
    model_args = ",".join(
        [
            f"model={model}",
            f"base_url={BASE_URL}/v1/chat/completions",
            f"num_concurrent={concurrency}",
            "max_retries=3",
            "tokenized_requests=False",
        ]
    )
    argv = [
        lm_eval,
        "--model",
        "local-chat-completions",
        "--model_args",
        model_args,
        "--apply_chat_template",
        "--include_path",
        str(task_dir),
        "--tasks",
        "welip_arithmetic",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    return serving_bench.Command(
        argv, {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "none"}
    )


def timed(command: serving_bench.Command, log_path: Path) -> float:
    """Run ``command`` to the end; its wall time in seconds."""
    started = time.perf_counter()
    with log_path.open("ab") as log:
        log.write(f"$ {command.shell()}\n".encode())
        log.flush()
        code = subprocess.call(
            command.argv,
            cwd=REPO,
            env={**os.environ, **command.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
    if code != 0:
        raise serving_bench.BenchmarkError(f"`{command.shell()}` exited {code}; see {log_path}")
    return time.perf_counter() - started


def welip_outputs(out: Path) -> tuple[dict[str, str], float]:
    (summary_path,) = out.glob("eval/*/*/summary.json")
    samples = [json.loads(line) for line in (summary_path.parent / "samples.jsonl").read_text().splitlines()]
    summary = json.loads(summary_path.read_text())
    return {s["id"]: s["output"] for s in samples}, summary["metrics"]["numeric_match"]["mean"]


def lm_eval_outputs(out: Path) -> tuple[dict[str, str], float]:
    (samples_path,) = out.rglob("samples_welip_arithmetic_*.jsonl")
    (results_path,) = out.rglob("results_*.json")
    outputs = {}
    for line in samples_path.read_text().splitlines():
        record = json.loads(line)
        outputs[record["doc"]["id"]] = record["resps"][0][0]
    results = json.loads(results_path.read_text())["results"]["welip_arithmetic"]
    return outputs, results["exact_match,last_number"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = RESULTS_DIR / f"evaluate-{stamp}"
    model = "smollm2-135m-instruct"
    servers = [serving_bench.welip_server("welip", CONFIG, BASE_URL, {})]
    if args.dry_run:
        data, task_dir = Path("<work>/arithmetic-x.jsonl"), Path("<work>/lm_eval_tasks")
    else:
        if not Path(args.lm_eval).exists():
            raise SystemExit(f"{args.lm_eval} not found: run `make bench-eval` (it creates .venv-lmeval)")
        serving_bench.check_machine_is_free(servers)
        work_dir.mkdir(parents=True)
        data, task_dir, _ = write_inputs(work_dir, args.repeat)
    high = 2 * args.concurrency
    contenders = {
        "welip": lambda out: welip_command(data, out, args.concurrency, model),
        "lm-eval": lambda out: lm_eval_command(args.lm_eval, task_dir, out, 1, model),
        f"lm-eval-c{args.concurrency}": lambda out: lm_eval_command(
            args.lm_eval, task_dir, out, args.concurrency, model
        ),
        f"welip-c{high}": lambda out: welip_command(data, out, high, model),
        f"lm-eval-c{high}": lambda out: lm_eval_command(args.lm_eval, task_dir, out, high, model),
    }
    pairs = [
        ("welip", "lm-eval"),
        ("welip", f"lm-eval-c{args.concurrency}"),
        (f"welip-c{high}", f"lm-eval-c{high}"),
    ]
    if args.dry_run:
        for name, make in contenders.items():
            print(f"{name}: {make(Path('<out>')).shell()}")
        return 0
    n_docs = sum(1 for _ in data.open())
    log_path = work_dir / "runs.log"
    runs: list[dict[str, Any]] = []
    with serving_bench.running(servers[0], work_dir):
        # Warm-up, discarded: the engine's first requests are slow, and each tool's
        # first run creates what later runs reuse (WeLIP's MLflow store, lm-eval's
        # dataset cache), as on any machine where they ran before.
        for name in ("welip", "lm-eval"):
            warm = work_dir / f"warm-up-{name}"
            warm.mkdir()
            timed(contenders[name](warm), log_path)
        order = list(contenders)
        for round_no in range(1, args.rounds + 1):
            for name in order if round_no % 2 else list(reversed(order)):
                out = work_dir / f"{name}-r{round_no}"
                out.mkdir()
                wall_s = timed(contenders[name](out), log_path)
                outputs, score = welip_outputs(out) if name.startswith("welip") else lm_eval_outputs(out)
                runs.append(
                    {"name": name, "round": round_no, "wall_s": wall_s, "score": score, "outputs": outputs}
                )
                print(
                    f"round {round_no} {name}: {n_docs / wall_s:.2f} samples/s ({wall_s:.1f} s), "
                    f"score {score:.4f}"
                )

    summary = summarize(runs, n_docs, list(contenders))
    ratios = {f"{a} / {b}": summary[a]["samples_per_s"] / summary[b]["samples_per_s"] for a, b in pairs}
    print_table(summary, ratios, n_docs)
    path = RESULTS_DIR / f"evaluate-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "docs": n_docs,
                "summary": summary,
                "ratios": ratios,
                "runs": [{k: v for k, v in r.items() if k != "outputs"} for r in runs],
                "commands": {name: make(work_dir / "<out>").shell() for name, make in contenders.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {path}")
    return 0


def summarize(runs: list[dict[str, Any]], n_docs: int, names: list[str]) -> dict[str, Any]:
    reference = next(r for r in runs if r["name"] == "welip")["outputs"]
    out: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        agree = [sum(r["outputs"].get(k) == v for k, v in reference.items()) for r in mine]
        out[name] = {
            "samples_per_s": mean(n_docs / r["wall_s"] for r in mine),
            "wall_s": [round(r["wall_s"], 2) for r in mine],
            "score": [r["score"] for r in mine],
            "outputs_equal_to_welip": min(agree),
        }
    return out


def print_table(summary: dict[str, Any], ratios: dict[str, float], n_docs: int) -> None:
    print(f"\n{n_docs} documents")
    print("| runner | samples/s | wall s per run | exact match | answers equal to WeLIP's (c32) |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in summary.items():
        scores = ", ".join(f"{s:.4f}" for s in row["score"])
        walls = ", ".join(f"{w:.1f}" for w in row["wall_s"])
        same = f"{row['outputs_equal_to_welip']}/{n_docs}"
        print(f"| {name} | {row['samples_per_s']:.2f} | {walls} | {scores} | {same} |")
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
