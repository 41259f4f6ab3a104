"""GRPO alignment: TRL's ``GRPOTrainer`` in a Ray Train worker, or VeRL's Ray trainer on GPUs.

Rows are VeRL's: a chat ``prompt``, a ``data_source`` and ``reward_model.ground_truth``.
The reward is an evaluation metric of the answer against the ground truth
(:mod:`welip.training._rewards`), the same function in both backends.

- ``trl``: one Ray Train worker group runs TRL's trainer with a PEFT LoRA adapter; rank 0
  logs TRL's per-step numbers into the MLflow run the driver opened and reports the
  adapter as the final checkpoint. TRL's optimizer state is not checkpointed mid-run: a
  restarted group trains from the start (this backend is for small models).
- ``verl``: :func:`verl_config` translates the config into VeRL's ``ppo_trainer`` keys and
  :func:`run_verl` runs VeRL's ``TaskRunner`` (FSDP actors, vLLM rollouts) on the cluster.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from welip.evaluation import Document, Malformed, load_dataset
from welip.models import resolve_model_path
from welip.store import filesystem, write_bytes
from welip.training._config import AlignConfig
from welip.training._data import chat_messages
from welip.training._model import (
    BackendUnavailable,
    check_backend,
    load_tokenizer,
    lora_config,
    save_adapter,
    torch_threads,
)
from welip.training._sft import ADAPTER_DIR, progress_bar

logger = logging.getLogger("welip.align")

STATE_FILE = "welip_state.json"
# VeRL imports the reward module by name on its reward workers (the same on every node,
# unlike a file path inside a runtime_env working_dir).
VERL_REWARD_PATH = "pkg://welip.training._rewards"
VERL_REWARD_NAME = "compute_score"
VERL_SCORE_METRIC = "critic/score/mean"  # VeRL's mean sequence score: the reward before KL


@dataclass(frozen=True)
class Prompt:
    """One RL row: the chat prompt, where it came from, and the answer the reward compares with."""

    row: int
    id: str
    prompt: list[dict[str, str]]
    data_source: str
    ground_truth: str


@dataclass(frozen=True)
class AlignData:
    """Usable prompts, the rows that could not be used, and the file's digest."""

    prompts: list[Prompt]
    malformed: list[Malformed]
    sha256: str


def to_prompt(doc: Document, default_source: str) -> Prompt:
    """A dataset row as a :class:`Prompt`.

    ``prompt`` is a chat list (``[{"role", "content"}, ...]``) or a string (one user
    message); the answer is ``reward_model.ground_truth`` or a top-level ``ground_truth``
    (a non-string answer becomes its JSON); ``data_source`` defaults to ``default_source``.

    Raises:
        ValueError: no usable prompt or answer.
    """
    row = doc.doc
    raw = row.get("prompt")
    if isinstance(raw, str):
        if not raw.strip():
            raise ValueError("`prompt` is empty")
        messages = [{"role": "user", "content": raw}]
    elif isinstance(raw, list) and raw:
        messages = chat_messages(raw, "prompt message")
        if messages[-1]["role"] == "assistant":
            raise ValueError("the prompt ends with an assistant message: nothing left to generate")
    else:
        raise ValueError("`prompt` must be a non-empty string or list of chat messages")
    reward_model = row.get("reward_model")
    if reward_model is not None and not isinstance(reward_model, dict):
        raise ValueError("`reward_model` must be an object with `ground_truth`")
    truth = (reward_model or {}).get("ground_truth", row.get("ground_truth"))
    if truth is None or truth == "":
        raise ValueError("no answer: set `reward_model.ground_truth` (or `ground_truth`)")
    source = row.get("data_source", default_source)
    if not isinstance(source, str) or not source:
        raise ValueError("`data_source` must be a non-empty string")
    answer = truth if isinstance(truth, str) else json.dumps(truth, ensure_ascii=False)
    return Prompt(doc.row, doc.id, messages, source, answer)


def load_align_data(path: str, *, tokenizer: Any = None, max_prompt_len: int | None = None) -> AlignData:
    """Read ``path`` (local or ``s3://``, jsonl, csv or parquet) into prompts.

    Rows that do not parse or convert, and prompts longer than ``max_prompt_len`` tokens
    once rendered with ``tokenizer``'s chat template, are reported as :class:`Malformed`
    with their row number and id; they never stop the run.

    Raises:
        ValueError: no row is usable.
    """
    dataset = load_dataset(path)
    default_source = Path(path.rstrip("/")).stem
    prompts: list[Prompt] = []
    malformed = list(dataset.malformed)
    for doc in dataset.documents:
        try:
            prompt = to_prompt(doc, default_source)
            if tokenizer is not None and max_prompt_len is not None:
                n = prompt_tokens(tokenizer, prompt.prompt)
                if n > max_prompt_len:
                    raise ValueError(f"the prompt has {n} tokens, more than max_prompt_len={max_prompt_len}")
        except ValueError as exc:
            malformed.append(Malformed(doc.row, doc.id, str(exc)))
            continue
        prompts.append(prompt)
    if not prompts:
        first = f"; first problem: {malformed[0].error}" if malformed else ""
        raise ValueError(f"{path}: no usable prompt row{first}")
    return AlignData(prompts, sorted(malformed, key=lambda m: m.row), dataset.sha256)


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of ``messages`` rendered with the chat template and the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def trl_rows(prompts: list[Prompt]) -> list[dict[str, Any]]:
    """Rows of TRL's dataset: ``prompt`` plus the columns the reward function receives."""
    return [
        {"prompt": p.prompt, "ground_truth": p.ground_truth, "data_source": p.data_source} for p in prompts
    ]


def verl_rows(prompts: list[Prompt]) -> list[dict[str, Any]]:
    """Rows of VeRL's parquet: ``prompt``, ``data_source``, ``reward_model``, ``extra_info``."""
    return [
        {
            "prompt": p.prompt,
            "data_source": p.data_source,
            "reward_model": {"style": "rule", "ground_truth": p.ground_truth},
            "extra_info": {"index": p.row, "id": p.id},
        }
        for p in prompts
    ]


def write_parquet(rows: list[dict[str, Any]], url: str) -> None:
    """Write ``rows`` as one parquet file at ``url`` (local path or ``s3://``)."""
    import io

    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    if not url.startswith("s3://"):
        Path(url).expanduser().parent.mkdir(parents=True, exist_ok=True)
    write_bytes(url, buffer.getvalue())


def check_align_backend(cfg: AlignConfig, cluster_gpus: float) -> None:
    """Refuse an RL backend the cluster cannot run, before any worker starts.

    Raises:
        BackendUnavailable: trl with unsloth, verl on CPU workers, verl not installed,
        or GPU workers on a cluster without as many GPUs.
    """
    if cfg.rl_backend == "trl" and cfg.backend == "unsloth":
        raise BackendUnavailable("rl_backend trl trains a PEFT adapter: set backend=peft")
    if cfg.rl_backend == "verl":
        if not cfg.use_gpu:
            raise BackendUnavailable(
                "rl_backend verl trains on GPUs (FSDP actors, vLLM rollouts): set use_gpu=true "
                "on a GPU cluster, or use rl_backend trl on CPU"
            )
        if importlib.util.find_spec("verl") is None:
            raise BackendUnavailable(
                "rl_backend verl needs the verl package on the cluster (pip install 'verl[vllm]', "
                "see kuberay/ray-job.align.yaml); rl_backend trl runs without it"
            )
    check_backend(cfg, cluster_gpus)


def grpo_loop(loop_config: dict[str, Any]) -> None:
    """Train a LoRA adapter with TRL's GRPO on this worker; report it as the final checkpoint."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from welip.training._rewards import reward_function

    cfg = AlignConfig.model_validate(loop_config["config"])
    rank = ray.train.get_context().get_world_rank()
    rows: list[dict[str, Any]] = ray.get(loop_config["data"][0])
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(torch_threads(cfg))

    model_path = resolve_model_path(cfg.model)  # per node: packaged models convert into its cache
    tokenizer = load_tokenizer(model_path)
    tokenizer.padding_side = "left"  # prompts are left-padded for generation
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if on_gpu else torch.float32
    )
    lora = lora_config(cfg)
    steps = _StepLog(
        loop_config.get("mlflow_run_id") if rank == 0 else None, loop_config.get("mlflow_uri"), cfg.max_steps
    )
    reward_funcs: list[Any] = [reward_function(cfg.reward_metric, cfg.reward_kwargs)]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            max_steps=cfg.max_steps,
            # TRL's batch counts completions: every prompt of the step with its whole group.
            per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_len,
            temperature=cfg.temperature,
            beta=cfg.beta,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_steps,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.log_every_steps,
            report_to=[],
            use_cpu=not on_gpu,
            bf16=on_gpu,
            seed=cfg.seed,
            save_strategy="no",
            disable_tqdm=True,
            ddp_find_unused_parameters=False,  # every LoRA weight is in every forward
            use_vllm=False,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[steps.callback()],
        )
        trainer.remove_callback(PrinterCallback)  # _StepLog writes the step lines
        trainer.train()
    metrics = {
        "step": trainer.state.global_step,
        "rewards": [reward for _, reward in steps.rewards],
        "reward_first": steps.rewards[0][1] if steps.rewards else None,
        "reward_last": steps.rewards[-1][1] if steps.rewards else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # LoRA weights are replicated: one copy is the checkpoint
            save_adapter(trainer.model, load_tokenizer(model_path), Path(tmp) / ADAPTER_DIR)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


class _StepLog:
    """Rank 0's per-step record: TRL's numbers into the driver's MLflow run, and the rewards."""

    def __init__(self, run_id: str | None, tracking_uri: str | None, max_steps: int) -> None:
        self.rewards: list[tuple[int, float]] = []
        self._run_id = run_id
        self._max_steps = max_steps
        self._client: Any = None
        if run_id:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking_uri)

    def log(self, step: int, logs: dict[str, Any]) -> None:
        numbers = {
            key: float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if "reward" in numbers:
            self.rewards.append((step, numbers["reward"]))
            logger.info(
                "%s reward %.3f (std %.3f) loss %.4f",
                progress_bar(step, self._max_steps),
                numbers["reward"],
                numbers.get("reward_std", 0.0),
                numbers.get("loss", 0.0),
            )
        if self._client is None or not numbers:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in numbers.items()]
        self._client.log_batch(self._run_id, metrics=batch, synchronous=True)

    def callback(self) -> Any:
        """A transformers ``TrainerCallback`` feeding :meth:`log` (built here: transformers loads late)."""
        from transformers import TrainerCallback

        record = self

        class _Callback(TrainerCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and state.is_world_process_zero:
                    record.log(int(state.global_step), logs)

        return _Callback()


def verl_config(
    cfg: AlignConfig,
    *,
    train_files: str | None = None,
    model_path: str | None = None,
    checkpoint_dir: str | None = None,
    run_name: str | None = None,
    gpus_per_node: int | None = None,
) -> dict[str, Any]:
    """VeRL ``ppo_trainer`` overrides (dotted keys) for ``cfg``; ``cfg.verl`` applied last.

    Args:
        cfg: An ``rl_backend: verl`` config.
        train_files: VeRL-shaped parquet (default: ``cfg.dataset``, already VeRL's shape).
        model_path: The base model as every node reads it (default: ``cfg.model``).
        checkpoint_dir: VeRL's ``trainer.default_local_dir`` on the node that saves.
        run_name: MLflow run name (``trainer.experiment_name``; default: ``cfg.name``).
        gpus_per_node: GPUs of one node (default: all ``num_workers`` on one node).

    Raises:
        ValueError: ``num_workers`` does not fill whole nodes of ``gpus_per_node``.
    """
    per_node = min(gpus_per_node or cfg.num_workers, cfg.num_workers)
    if cfg.num_workers % per_node:
        raise ValueError(f"num_workers={cfg.num_workers} GPUs do not fill nodes of {per_node} GPUs")
    data = train_files or cfg.dataset
    prompts_per_step = cfg.batch_size * cfg.num_workers
    micro = cfg.num_generations  # sequences per GPU forward: one group
    translated: dict[str, Any] = {
        "algorithm.adv_estimator": "grpo",
        "data.train_files": data,
        "data.val_files": data,  # VeRL builds a validation set; validation itself is off
        "data.train_batch_size": prompts_per_step,
        "data.max_prompt_length": cfg.max_prompt_len,
        "data.max_response_length": cfg.max_completion_len,
        "data.seed": cfg.seed,
        "actor_rollout_ref.model.path": model_path or cfg.model,
        "actor_rollout_ref.model.lora_rank": cfg.lora_rank,
        "actor_rollout_ref.model.lora_alpha": cfg.lora_alpha,
        "actor_rollout_ref.model.target_modules": list(cfg.lora_targets),
        "actor_rollout_ref.actor.optim.lr": cfg.learning_rate,
        "actor_rollout_ref.actor.optim.weight_decay": cfg.weight_decay,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": cfg.warmup_steps,
        "actor_rollout_ref.actor.grad_clip": cfg.max_grad_norm,
        # One policy update per step over all of the step's prompts, as TRL does.
        "actor_rollout_ref.actor.ppo_mini_batch_size": prompts_per_step,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.use_kl_loss": cfg.beta > 0,
        "actor_rollout_ref.actor.kl_loss_coef": cfg.beta,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": cfg.num_generations,
        "actor_rollout_ref.rollout.temperature": cfg.temperature,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "actor_rollout_ref.rollout.load_format": "safetensors",  # required with LoRA
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        "custom_reward_function.path": VERL_REWARD_PATH,
        "custom_reward_function.name": VERL_REWARD_NAME,
        "custom_reward_function.reward_kwargs": {"metric": cfg.reward_metric, **cfg.reward_kwargs},
        "trainer.total_training_steps": cfg.max_steps,
        "trainer.total_epochs": cfg.max_steps,  # an upper bound: every epoch has a step
        "trainer.n_gpus_per_node": per_node,
        "trainer.nnodes": cfg.num_workers // per_node,
        "trainer.logger": ["console", "mlflow"] if cfg.mlflow else ["console"],
        "trainer.project_name": cfg.experiment,
        "trainer.experiment_name": run_name or cfg.name,
        "trainer.default_local_dir": checkpoint_dir or f"/tmp/welip-verl/{run_name or cfg.name}",
        "trainer.save_freq": cfg.checkpoint_every_steps,
        "trainer.max_actor_ckpt_to_keep": cfg.keep_checkpoints,
        "trainer.val_before_train": False,
        "trainer.test_freq": -1,
    }
    return {**translated, **cfg.verl}


# Keys WeLIP sets that VeRL's default config does not declare (struct mode refuses the rest).
_VERL_ADDED_KEYS = ("custom_reward_function.reward_kwargs",)


def run_verl(
    cfg: AlignConfig,
    *,
    train_files: str,
    adapter_dir: Path,
    run_name: str,
    mlflow_run_id: str | None,
    mlflow_uri: str | None,
) -> list[float]:
    """Run VeRL's GRPO on the connected Ray cluster; write the adapter into ``adapter_dir``.

    The base model is prepared on every GPU node first (the same cache path on each);
    VeRL's ``TaskRunner`` copies ``s3://`` training data to its node, logs into the
    job's MLflow run (``MLFLOW_RUN_ID``), and the last checkpoint's LoRA adapter is
    fetched from whichever node saved it.

    Returns:
        The mean reward of each step (from MLflow; empty when the run is not tracked).

    Raises:
        BackendUnavailable: verl is not importable here.
        RuntimeError: nodes disagree on the model path, or no node holds an adapter.
    """
    import ray

    try:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf, open_dict
        from verl.trainer.constants_ppo import PPO_RAY_RUNTIME_ENV
        from verl.trainer.main_ppo import TaskRunner, run_ppo
        from verl.utils.device import auto_set_device
    except ImportError as exc:
        raise BackendUnavailable(f"rl_backend verl: cannot import VeRL ({exc})") from exc

    gpu_nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    if not gpu_nodes:
        raise BackendUnavailable("rl_backend verl: the Ray cluster has no GPU node")
    paths = set(_on_nodes([n["NodeID"] for n in gpu_nodes], resolve_model_path, cfg.model))
    if len(paths) != 1:
        raise RuntimeError(f"GPU nodes resolved {cfg.model!r} to different paths: {sorted(paths)}")
    overrides = verl_config(
        cfg,
        train_files=train_files,
        model_path=paths.pop(),
        run_name=run_name,
        gpus_per_node=int(max(n["Resources"]["GPU"] for n in gpu_nodes)),
    )
    import verl.trainer

    config_dir = str(Path(verl.trainer.__file__).parent / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer")
    for key, value in overrides.items():
        if key in _VERL_ADDED_KEYS:
            with open_dict(config):
                OmegaConf.update(config, key, value, merge=False, force_add=True)
        else:
            OmegaConf.update(config, key, value, merge=True)  # unknown keys fail: typos surface
    auto_set_device(config)

    class _Runner(TaskRunner):
        """VeRL's TaskRunner, reading WeLIP storage: s3:// data is copied to this node first."""

        def run(self, config: Any) -> Any:
            local = tempfile.mkdtemp(prefix="welip-verl-data-")
            for key in ("train_files", "val_files"):
                url = str(config.data[key])
                if url.startswith("s3://"):
                    fs, path = filesystem(url)
                    target = str(Path(local) / f"{key}.parquet")
                    fs.get(path, target)
                    config.data[key] = target
            return super().run(config)

    env = dict(PPO_RAY_RUNTIME_ENV["env_vars"])
    if mlflow_run_id and mlflow_uri:
        env.update(MLFLOW_RUN_ID=mlflow_run_id, MLFLOW_TRACKING_URI=mlflow_uri)
    run_ppo(config, task_runner_class=ray.remote(num_cpus=1, runtime_env={"env_vars": env})(_Runner))

    checkpoint_dir = str(overrides["trainer.default_local_dir"])
    alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    found = [files for files in _on_nodes(alive, _latest_verl_adapter, checkpoint_dir) if files]
    if not found:
        raise RuntimeError(f"VeRL saved no LoRA adapter under {checkpoint_dir} on any node")
    step, files = max(found, key=lambda f: f[0])
    adapter_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (adapter_dir / name).write_bytes(data)
    load_tokenizer(resolve_model_path(cfg.model)).save_pretrained(str(adapter_dir))
    logger.info("VeRL's adapter of step %d fetched", step)
    if not mlflow_run_id:
        return []
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=mlflow_uri).get_metric_history(mlflow_run_id, VERL_SCORE_METRIC)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _on_nodes(node_ids: list[str], fn: Any, *args: Any) -> list[Any]:
    """``fn(*args)`` once on each node, pinned there; the results in node order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    pinned = [NodeAffinitySchedulingStrategy(node_id, soft=False) for node_id in node_ids]
    return list(ray.get([task.options(scheduling_strategy=where).remote(*args) for where in pinned]))


def _latest_verl_adapter(checkpoint_dir: str) -> tuple[int, dict[str, bytes]] | None:
    """The newest ``global_step_N/actor/lora_adapter`` files under ``checkpoint_dir`` on this node."""
    root = Path(checkpoint_dir).expanduser()
    adapters = [
        (int(p.parents[1].name.removeprefix("global_step_")), p)
        for p in root.glob("global_step_*/actor/lora_adapter")
        if p.parents[1].name.removeprefix("global_step_").isdigit()
        and (p / "adapter_model.safetensors").is_file()
    ]
    if not adapters:
        return None
    step, path = max(adapters)
    return step, {f.name: f.read_bytes() for f in path.iterdir() if f.is_file()}
