"""GRPO with VeRL: VeRL's Ray PPO trainer with vLLM rollouts on GPUs (``rl_backend: verl``).

:func:`verl_config` translates an :class:`AlignConfig` into VeRL's ``ppo_trainer`` keys
and :func:`run_verl` runs VeRL's ``TaskRunner`` (FSDP actors, vLLM rollouts) on the
cluster, then fetches the LoRA adapter of the last checkpoint. The reward is the same
evaluation metric as TRL's (:mod:`welip.training._rewards`).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

from welip.models import resolve_model_path
from welip.store import filesystem
from welip.training._config import AlignConfig
from welip.training._model import BackendUnavailable, load_tokenizer
from welip.training._registry import MlflowRun

logger = logging.getLogger("welip.align")

# VeRL imports the reward module by name on its reward workers (the same on every node,
# unlike a file path inside a runtime_env working_dir).
VERL_REWARD_PATH = "pkg://welip.training._rewards"
VERL_REWARD_NAME = "compute_score"
VERL_SCORE_METRIC = "critic/score/mean"  # VeRL's mean sequence score: the reward before KL


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
        checkpoint_dir: VeRL's ``trainer.default_local_dir`` on the node that saves (default:
            VeRL's own, under the working directory; :func:`run_verl` makes a private one per run).
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
        "trainer.save_freq": cfg.checkpoint_every_steps,
        "trainer.max_actor_ckpt_to_keep": cfg.keep_checkpoints,
        "trainer.val_before_train": False,
        "trainer.test_freq": -1,
    }
    if checkpoint_dir is not None:
        translated["trainer.default_local_dir"] = checkpoint_dir
    return {**translated, **cfg.verl}


# Keys WeLIP sets that VeRL's default config does not declare (struct mode refuses the rest).
_VERL_ADDED_KEYS = ("custom_reward_function.reward_kwargs",)


def run_verl(
    cfg: AlignConfig,
    *,
    train_files: str,
    adapter_dir: Path,
    run_name: str,
    mlflow_run: MlflowRun | None,
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
    # VeRL resumes from (unpickles) what it finds there and the adapter is fetched from it:
    # never a shared, guessable /tmp path another local user could create first.
    checkpoint_dir = _new_checkpoint_dir(run_name)
    _on_nodes([n["NodeID"] for n in gpu_nodes], _make_private_dir, checkpoint_dir)
    overrides = verl_config(
        cfg,
        train_files=train_files,
        model_path=paths.pop(),
        checkpoint_dir=checkpoint_dir,
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
    if mlflow_run:
        env.update(MLFLOW_RUN_ID=mlflow_run.run_id, MLFLOW_TRACKING_URI=mlflow_run.tracking_uri)
    run_ppo(config, task_runner_class=ray.remote(num_cpus=1, runtime_env={"env_vars": env})(_Runner))

    checkpoint_dir = str(overrides["trainer.default_local_dir"])  # cfg.verl may name its own
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
    if not mlflow_run:
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_run.tracking_uri)
    history = client.get_metric_history(mlflow_run.run_id, VERL_SCORE_METRIC)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def _on_nodes(node_ids: list[str], fn: Any, *args: Any) -> list[Any]:
    """``fn(*args)`` once on each node, pinned there; the results in node order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    pinned = [NodeAffinitySchedulingStrategy(node_id, soft=False) for node_id in node_ids]
    return list(ray.get([task.options(scheduling_strategy=where).remote(*args) for where in pinned]))


def _new_checkpoint_dir(run_name: str) -> str:
    """A fresh path for one run's VeRL checkpoints, the same on every node, that nobody can guess."""
    return str(Path(tempfile.gettempdir()) / f"welip-verl-{run_name}-{secrets.token_hex(8)}")


def _make_private_dir(path: str) -> None:
    """Create ``path`` on this node, readable and writable by this user only.

    Raises:
        FileExistsError: something is there already that is not this user's own directory.
    """
    try:
        Path(path).mkdir(mode=0o700)
    except FileExistsError:
        if not _owned_here(Path(path)):  # this user's own: another Ray node on this host made it
            raise


def _owned_here(path: Path) -> bool:
    """``path`` is a directory (not a link) of this user's that nobody else can write into."""
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _latest_verl_adapter(checkpoint_dir: str) -> tuple[int, dict[str, bytes]] | None:
    """The newest ``global_step_N/actor/lora_adapter`` files under ``checkpoint_dir`` on this node.

    Only from a directory of this user's that nobody else can write: the adapter is published.
    """
    root = Path(checkpoint_dir).expanduser()
    if not root.exists():
        return None
    if not _owned_here(root):
        logger.warning("ignoring %s on this node: not a directory of this user's only", root)
        return None
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
