"""Fine-tuning benchmark: WeLIP's Ray Train LoRA job (one worker) against a plain PEFT loop.

    python benchmarks/finetune.py                           # 30 steps; plain, welip, plain, welip
    python benchmarks/finetune.py --steps 40 --repeats 3 --threads 2
    python benchmarks/finetune.py --only plain --repeats 2  # the anchor alone, to see its spread
    python benchmarks/finetune.py --dry-run                 # print the commands, start nothing

Both sides train the same LoRA (rank, alpha, dropout, targets) on the same base model
from the same seed, with AdamW at the same learning rate and schedule, gradient
clipping, batch size and ``max_seq_len``, on the same micro-batches in the same order:

* ``welip``: ``python jobs/finetune.py --config <config> max_steps=N num_workers=1
  torch_threads=T register_model=false mlflow=false ...``, as a user runs it, on a
  private local Ray started by the job (``RAY_ADDRESS=local``, its own ``RAY_TMPDIR``),
  so it neither joins nor disturbs a cluster someone else runs here;
* ``plain``: this file run as ``--anchor <spec>`` in a fresh process: transformers'
  ``AutoModelForCausalLM`` + PEFT's ``get_peft_model`` + ``torch.optim.AdamW``, the
  loss from ``labels=``. It imports neither WeLIP nor Ray: the driver tokenizes the data
  with ``welip.training.load_training_data`` and hands over token ids and the batch order
  (``welip.training.micro_batch_indices``, the job's own), so token counts are identical.

Training tokens/s is the tokens of steps ``warmup+1 .. N-1`` (unpadded, as the job counts
them) over the wall time from the end of step ``warmup`` to the end of step ``N-1``: model
loading, Ray start-up and warm-up steps are outside it, and whatever the job does between
its steps (checkpoints every ``checkpoint_every_steps``) is inside it. Step ``N`` is left
out because the job computes its after-training probe loss before it logs that step. The
end of a WeLIP step is when its progress line reaches this script through Ray's log
forwarding (the worker's lines carry no time of their own); the end of a plain step is
``time.perf_counter()`` in the loop. Step-only tokens/s is the same tokens over the summed
step times alone (WeLIP: from the tokens/s it logs per step), which leaves checkpoints
and log forwarding out.

Peak memory: ``VmHWM`` (the kernel's peak resident set) of the process that trains, the
Ray Train worker or the plain process, read from ``/proc`` every 0.25 s while it runs; and
the highest sum of ``Pss`` over the whole process tree, sampled every 5 s (for WeLIP the
driver, GCS, raylet, dashboard and agents, Train controller and worker; for plain the one
process). The share of the CPUs that processes outside the run used while it ran is
recorded per run: the box may be shared, and only runs on a quiet box compare.

Output: a table; ``benchmarks/results/finetune-<stamp>.json`` (or ``--out``); logs in
``benchmarks/results/finetune-<stamp>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from statistics import mean
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_CONFIG = REPO / "configs" / "finetune" / "smollm2_faq.yaml"
RUN_TIMEOUT_S = 1800
# Reading a process's VmHWM costs nothing; walking the tree costs ~3 ms of CPU, and Pss
# (smaps_rollup walks page tables) ~60 ms for WeLIP's ~27 processes: sampled every 0.25 s,
# that took a quarter of a core from the job on a 2-core box. Hence three rates.
POLL_S = 0.25
TREE_EVERY_S = 1.0
PSS_EVERY_S = 5.0
SIDES = ("plain", "welip")
ANCHOR_RESULT = "ANCHOR_RESULT "
# The job's progress line: "[####....] 12/30  40% loss 3.0152 lr 7.50e-04 grad_norm 1.224 tokens/s 216 eta 6s"
STEP_LINE = re.compile(
    r"\]\s+(\d+)/(\d+)\s+\d+%\s+loss\s+(\S+)\s+lr\s+\S+\s+grad_norm\s+\S+\s+tokens/s\s+(\d+)"
)
WORKER_PID = re.compile(r"\(RayTrainWorker pid=(\d+)\)")


class BenchmarkError(RuntimeError):
    """A run failed or its output could not be read."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Fine-tune YAML, as the job takes.")
    parser.add_argument("--steps", type=_positive, default=30, help="Optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Leading steps left out of tokens/s.")
    parser.add_argument("--repeats", type=_positive, default=2, help="Runs of each side, alternating.")
    parser.add_argument(
        "--threads", type=_positive, default=None, help="torch threads, both sides (default: the config's)."
    )
    parser.add_argument("--only", choices=SIDES, default=None, help="Run one side only.")
    parser.add_argument("--out", default=None, help="Results JSON (default benchmarks/results/...).")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--anchor", metavar="SPEC", help=argparse.SUPPRESS)  # the plain loop, in a child
    args = parser.parse_args(argv)
    if not args.anchor and args.steps < args.warmup + 2:
        parser.error(f"--steps must be at least --warmup + 2 ({args.warmup + 2})")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# --- the anchor: a plain single-process transformers + PEFT loop ------------------------


def anchor(spec_path: str) -> None:
    """Train as a plain script would; print one JSON line with each step's time and loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    base = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    lora = LoraConfig(
        r=spec["lora_rank"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules=spec["lora_targets"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["learning_rate"], weight_decay=spec["weight_decay"])
    warmup, steps = spec["warmup_steps"], len(spec["batches"])

    def factor(step: int) -> float:  # the job's schedule: linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    examples, pad = spec["examples"], spec["pad_id"]
    records = []
    for step, indices in enumerate(spec["batches"], start=1):
        started = time.perf_counter()
        rows = [examples[i] for i in indices]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([labs + [-100] * (width - len(labs)) for _, labs in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        records.append({"step": step, "end": ended, "step_s": ended - started, "loss": float(loss)})
        print(f"plain step {step}/{steps} loss {float(loss):.4f} {ended - started:.2f}s", flush=True)
    print(
        ANCHOR_RESULT
        + json.dumps(
            {
                "steps": records,
                "torch_threads": torch.get_num_threads(),
                "vm_hwm_kib": _status_kib(os.getpid()),
            }
        ),
        flush=True,
    )


# --- driver --------------------------------------------------------------------------------


@dataclass
class Workload:
    """What both sides train on: the job's config, the token ids and the batch order."""

    config_path: str
    overrides: list[str]
    cfg: Any
    model_path: str
    examples: list[tuple[list[int], list[int]]]
    batches: list[list[int]]
    pad_id: int
    threads: int

    @property
    def step_tokens(self) -> list[int]:
        return [sum(len(self.examples[i][0]) for i in batch) for batch in self.batches]


def load_workload(args: argparse.Namespace) -> Workload:
    """The job's config with the benchmark's overrides, tokenized as the job tokenizes it."""
    from welip.config import load_config
    from welip.models import resolve_model_path
    from welip.training import (
        FinetuneConfig,
        load_tokenizer,
        load_training_data,
        micro_batch_indices,
    )

    base = load_config(FinetuneConfig, args.config)
    threads = args.threads or base.torch_threads or os.cpu_count() or 1
    overrides = [
        f"max_steps={args.steps}",
        "num_workers=1",
        f"torch_threads={threads}",
        "log_every_steps=1",
        "register_model=false",
        "mlflow=false",
        "merge=false",
    ]
    cfg = load_config(FinetuneConfig, args.config, overrides)
    if cfg.grad_accum_steps != 1 or cfg.use_gpu or cfg.backend != "peft":
        raise SystemExit("the plain anchor runs PEFT on CPU with one micro-batch per step: use such a config")
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    data = load_training_data(cfg.dataset, tokenizer, fmt=cfg.dataset_format, max_seq_len=cfg.max_seq_len)
    examples = [(e.input_ids, e.labels) for e in data.examples]
    order = micro_batch_indices(len(examples), 0, 1, cfg.batch_size, cfg.seed, 0)
    return Workload(
        config_path=args.config,
        overrides=overrides,
        cfg=cfg,
        model_path=model_path,
        examples=examples,
        batches=list(islice(order, args.steps)),
        pad_id=int(tokenizer.pad_token_id),
        threads=threads,
    )


def anchor_spec(work: Workload) -> dict[str, Any]:
    cfg = work.cfg
    return {
        "model_path": work.model_path,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "lora_targets": list(cfg.lora_targets),
        "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay,
        "warmup_steps": cfg.warmup_steps,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "threads": work.threads,
        "pad_id": work.pad_id,
        "examples": work.examples,
        "batches": work.batches,
    }


def commands(work: Workload, scratch: Path, run_name: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each side's command line and the environment it adds."""
    welip = [
        sys.executable,
        "jobs/finetune.py",
        "--config",
        work.config_path,
        *work.overrides,
        f"storage_url={scratch / run_name}",
    ]
    env = {
        "RAY_ADDRESS": "local",  # a private cluster: never join (or slow) one someone else runs here
        "RAY_TMPDIR": str(scratch),
        "RAY_DEDUP_LOGS": "0",  # every progress line as it comes
        "PYTHONUNBUFFERED": "1",
    }
    plain = [sys.executable, str(Path(__file__).resolve()), "--anchor", str(scratch / "anchor-spec.json")]
    return {"welip": (welip, env), "plain": (plain, {"PYTHONUNBUFFERED": "1"})}


@dataclass
class Watched:
    """What was seen of one run while it ran."""

    lines: list[tuple[float, str]] = field(default_factory=list)
    trainer_pid: int | None = None
    trainer_hwm_kib: int = 0
    tree_pss_kib: int = 0
    processes: set[str] = field(default_factory=set)
    pids: dict[int, float] = field(default_factory=dict)  # pid -> create time, for the clean-up
    cpu_s: dict[int, float] = field(default_factory=dict)  # pid -> user + system CPU seconds
    load_1m: list[float] = field(default_factory=list)


def run_side(
    side: str, argv: list[str], env: dict[str, str], log_path: Path
) -> tuple[Watched, float, dict[str, float]]:
    """Run one side to the end, reading its output and memory as it goes."""
    import psutil

    watched = Watched()
    busy_before = _busy_cpu_s()
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write(f"$ {_shell(argv, env)}\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, log, watched), daemon=True)
        reader.start()
        root = psutil.Process(proc.pid)
        if side == "plain":
            watched.trainer_pid = proc.pid
        next_tree = next_pss = 0.0
        try:
            while proc.poll() is None:
                if time.perf_counter() - started > RUN_TIMEOUT_S:
                    raise BenchmarkError(f"{side}: still running after {RUN_TIMEOUT_S} s; see {log_path}")
                now = time.perf_counter()
                if now >= next_tree:
                    with_pss = now >= next_pss
                    _sample_tree(root, watched, with_pss=with_pss)
                    next_tree = now + TREE_EVERY_S
                    next_pss = now + PSS_EVERY_S if with_pss else next_pss
                _sample_trainer(watched)
                watched.load_1m.append(os.getloadavg()[0])
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            reader.join(30)
            _end_leftovers(watched)
    wall_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchmarkError(f"{side}: exited with {proc.returncode}; see {log_path}")
    # How busy the box was with work not ours: CPU seconds outside this run's process tree
    # (and this script), as a share of all the CPUs' time.
    others_s = _busy_cpu_s() - busy_before - sum(watched.cpu_s.values())
    return (
        watched,
        wall_s,
        {
            "others_cpu_share": max(0.0, others_s) / (wall_s * (os.cpu_count() or 1)),
            "load_1m_mean": mean(watched.load_1m or [0.0]),
            "load_1m_max": max(watched.load_1m or [0.0]),
        },
    )


def _busy_cpu_s() -> float:
    import psutil

    times = psutil.cpu_times()
    # guest time is counted in user time already; steal (the hypervisor's) counts as busy.
    skip = ("idle", "iowait", "guest", "guest_nice")
    return float(sum(v for k, v in times._asdict().items() if k not in skip))


def _read_lines(stream: IO[str], log: IO[str], watched: Watched) -> None:
    for line in stream:
        now = time.perf_counter()
        watched.lines.append((now, line.rstrip("\n")))
        log.write(line)
        if watched.trainer_pid is None and (match := WORKER_PID.search(line)):
            watched.trainer_pid = int(match.group(1))
    log.flush()


def _sample_tree(root: Any, watched: Watched, *, with_pss: bool) -> None:
    import psutil

    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    total = 0
    for proc in tree:
        with contextlib.suppress(psutil.Error, OSError):
            watched.pids.setdefault(proc.pid, proc.create_time())
            watched.processes.add(proc.name())
            cpu = proc.cpu_times()
            watched.cpu_s[proc.pid] = cpu.user + cpu.system
            if with_pss:
                total += _smaps_rollup_kib(proc.pid, "Pss")
    watched.tree_pss_kib = max(watched.tree_pss_kib, total)


def _sample_trainer(watched: Watched) -> None:
    if watched.trainer_pid is not None:
        with contextlib.suppress(OSError):
            watched.trainer_hwm_kib = max(watched.trainer_hwm_kib, _status_kib(watched.trainer_pid))


def _end_leftovers(watched: Watched) -> None:
    # A job killed hard leaves its Ray processes behind; end those this run started
    # (pid and start time both match), nothing else.
    import psutil

    for pid, created in watched.pids.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()


def _status_kib(pid: int, key: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _smaps_rollup_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def measure(side: str, watched: Watched, work: Workload, warmup: int) -> dict[str, Any]:
    """Tokens/s over the steady window, step-only tokens/s, losses and peak memory of one run."""
    tokens = work.step_tokens
    steps = len(tokens)
    if side == "plain":
        result = next(
            (
                json.loads(line[len(ANCHOR_RESULT) :])
                for _, line in watched.lines
                if line.startswith(ANCHOR_RESULT)
            ),
            None,
        )
        if result is None:
            raise BenchmarkError("plain: no result line")
        ends = {r["step"]: r["end"] for r in result["steps"]}
        step_s = {r["step"]: r["step_s"] for r in result["steps"]}
        losses = {r["step"]: r["loss"] for r in result["steps"]}
        watched.trainer_hwm_kib = max(watched.trainer_hwm_kib, result["vm_hwm_kib"])
        extra: dict[str, Any] = {"torch_threads": result["torch_threads"]}
    else:
        ends, step_s, losses = {}, {}, {}
        for received, line in watched.lines:
            if (match := STEP_LINE.search(line)) and int(match.group(2)) == steps:
                step = int(match.group(1))
                if step in ends:
                    raise BenchmarkError(f"welip: step {step} ran twice (a worker restarted)")
                ends[step] = received
                losses[step] = float(match.group(3))
                step_s[step] = tokens[step - 1] / max(1, int(match.group(4)))
        extra = {"summary": _job_summary(watched.lines)}
    missing = [s for s in range(1, steps + 1) if s not in ends]
    if missing:
        raise BenchmarkError(f"{side}: no record of steps {missing}")
    window = range(warmup + 1, steps)  # steps warmup+1 .. N-1
    window_tokens = sum(tokens[s - 1] for s in window)
    window_s = ends[steps - 1] - ends[warmup]
    return {
        "tokens_per_s": window_tokens / window_s,
        "step_tokens_per_s": window_tokens / sum(step_s[s] for s in window),
        "window_steps": [window.start, window.stop - 1],
        "window_tokens": window_tokens,
        "window_s": window_s,
        "trainer_peak_rss_mib": watched.trainer_hwm_kib / 1024,
        "tree_peak_pss_mib": watched.tree_pss_kib / 1024,
        "processes": sorted(watched.processes),
        "losses": [losses[s] for s in range(1, steps + 1)],
        **extra,
    }


def _job_summary(lines: list[tuple[float, str]]) -> dict[str, Any] | None:
    texts = [text for _, text in lines]
    starts = [i for i, text in enumerate(texts) if text == "{"]
    if not starts:
        return None
    body: list[str] = []
    for text in texts[starts[-1] :]:
        body.append(text)
        if text == "}":
            break
    with contextlib.suppress(ValueError):
        summary: dict[str, Any] = json.loads("\n".join(body))
        return summary
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.anchor:
        anchor(args.anchor)
        return 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work_dir = RESULTS_DIR / f"finetune-{stamp}"
    work = load_workload(args)
    sides = [args.only] if args.only else list(SIDES)
    # Ray's unix sockets must stay under ~107 characters: a short scratch path in /tmp.
    scratch = Path(tempfile.mkdtemp(prefix="welip-ftb-"))
    if args.dry_run:
        shutil.rmtree(scratch)
        for side, (argv_, env) in commands(work, Path("<scratch>"), "<run>").items():
            if side in sides:
                print(f"{side}: {_shell(argv_, env)}")
        return 0
    work_dir.mkdir(parents=True)
    tokens = work.step_tokens
    print(
        f"{len(work.examples)} examples, {args.steps} steps of {work.cfg.batch_size}, "
        f"{sum(tokens)} tokens ({sum(tokens[args.warmup : args.steps - 1])} in steps "
        f"{args.warmup + 1}-{args.steps - 1}), {work.threads} torch threads, {os.cpu_count()} CPUs"
    )
    runs: list[dict[str, Any]] = []
    try:
        (scratch / "anchor-spec.json").write_text(json.dumps(anchor_spec(work)))
        for repeat in range(1, args.repeats + 1):
            for side in sides:
                name = f"{side}-r{repeat}"
                argv_, env = commands(work, scratch, name)[side]
                watched, wall_s, load = run_side(side, argv_, env, work_dir / f"{name}.log")
                run = {"side": side, "repeat": repeat, "wall_s": wall_s, **load}
                run.update(measure(side, watched, work, args.warmup))
                runs.append(run)
                print(
                    f"{name}: {run['tokens_per_s']:.1f} tok/s (step-only {run['step_tokens_per_s']:.1f}), "
                    f"trainer peak RSS {run['trainer_peak_rss_mib']:.0f} MiB, all processes "
                    f"{run['tree_peak_pss_mib']:.0f} MiB PSS, {wall_s:.0f} s, "
                    f"other processes {100 * load['others_cpu_share']:.0f}% of the CPUs, "
                    f"load {load['load_1m_mean']:.1f}"
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    summary = summarize(runs, sides)
    print_table(summary, args)
    path = Path(args.out) if args.out else RESULTS_DIR / f"finetune-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "cpus": os.cpu_count(),
                "config": args.config,
                "overrides": work.overrides,
                "threads": work.threads,
                "warmup_steps_excluded": args.warmup,
                "step_tokens": tokens,
                "summary": summary,
                "runs": runs,
                "commands": {
                    side: _shell(*cmd) for side, cmd in commands(work, Path("<scratch>"), "<run>").items()
                },
                "versions": _versions(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {path}\nlogs: {work_dir}")
    return 0


def summarize(runs: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in sides:
        mine = [r for r in runs if r["side"] == side]
        out[side] = {
            "tokens_per_s": mean(r["tokens_per_s"] for r in mine),
            "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in mine],
            "step_tokens_per_s": mean(r["step_tokens_per_s"] for r in mine),
            "step_tokens_per_s_runs": [round(r["step_tokens_per_s"], 1) for r in mine],
            "trainer_peak_rss_mib": max(r["trainer_peak_rss_mib"] for r in mine),
            "tree_peak_pss_mib": max(r["tree_peak_pss_mib"] for r in mine),
        }
    if set(SIDES) <= set(out):
        welip, plain = out["welip"], out["plain"]
        out["ratio"] = {
            "tokens_per_s": welip["tokens_per_s"] / plain["tokens_per_s"],
            "step_tokens_per_s": welip["step_tokens_per_s"] / plain["step_tokens_per_s"],
            "trainer_peak_rss": welip["trainer_peak_rss_mib"] / plain["trainer_peak_rss_mib"],
            "tree_peak_pss": welip["tree_peak_pss_mib"] / plain["tree_peak_pss_mib"],
        }
        # Same data, init and order: the per-step losses agree up to float noise, or the
        # two sides did not do the same work.
        pairs = zip(
            (r for r in runs if r["side"] == "welip"), (r for r in runs if r["side"] == "plain"), strict=False
        )
        out["max_loss_difference"] = max(
            abs(a - b) for w, p in pairs for a, b in zip(w["losses"], p["losses"], strict=True)
        )
    return out


def print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    first, last = args.warmup + 1, args.steps - 1
    print(f"\nsteps {first}-{last} of {args.steps} (warm-up {args.warmup} and the last step left out)")
    print(
        "| side | training tok/s (mean) | per run | step-only tok/s | trainer peak RSS MiB "
        "| all processes peak PSS MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for side in SIDES:
        if side not in summary:
            continue
        row = summary[side]
        per_run = ", ".join(f"{v:.1f}" for v in row["tokens_per_s_runs"])
        print(
            f"| {side} | {row['tokens_per_s']:.1f} | {per_run} | {row['step_tokens_per_s']:.1f} "
            f"| {row['trainer_peak_rss_mib']:.0f} | {row['tree_peak_pss_mib']:.0f} |"
        )
    if "ratio" in summary:
        ratio = summary["ratio"]
        print(
            f"welip / plain: tokens/s {ratio['tokens_per_s']:.3f}, "
            f"step-only {ratio['step_tokens_per_s']:.3f}, "
            f"trainer peak RSS {ratio['trainer_peak_rss']:.2f}, all processes {ratio['tree_peak_pss']:.2f}; "
            f"largest per-step loss difference {summary['max_loss_difference']:.4f}"
        )


def _shell(argv: list[str], env: dict[str, str]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{prefix} {shlex.join(argv)}".strip()


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    versions: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "peft", "ray"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


if __name__ == "__main__":
    sys.exit(main())
