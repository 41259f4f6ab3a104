"""Align configs: shipped files, VeRL's translation, and the errors a user sees before anything starts."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.chart import PROFILES, render_chart, serve_config_of
from welip.config import load_config
from welip.training import (
    AlignConfig,
    BackendUnavailable,
    check_align_backend,
    run_verl,
    verl_config,
)
from welip.training._verl import _latest_verl_adapter, _make_private_dir, _new_checkpoint_dir

REPO = Path(__file__).resolve().parents[3]
SMOLLM2 = REPO / "configs" / "align" / "smollm2_arithmetic.yaml"
VERL_GPU = REPO / "configs" / "align" / "verl_gpu.yaml"


def test_shipped_cpu_config_is_a_small_trl_run() -> None:
    cfg = load_config(AlignConfig, SMOLLM2)
    assert (cfg.name, cfg.model, cfg.rl_backend, cfg.backend) == (
        "welip-arith-grpo",
        "smollm2-135m-instruct",
        "trl",
        "peft",
    )
    assert cfg.reward_metric == "numeric_match" and not cfg.use_gpu
    assert cfg.max_steps <= 6 and cfg.num_generations == 4 and cfg.batch_size == 4
    assert cfg.max_completion_len <= 32


def test_overrides_change_single_keys_with_yaml_values() -> None:
    cfg = load_config(AlignConfig, SMOLLM2, ["max_steps=2", "reward_kwargs={tolerance: 1}", "beta=0.04"])
    assert (cfg.max_steps, cfg.reward_kwargs, cfg.beta) == (2, {"tolerance": 1}, 0.04)


def test_a_dotted_override_reaches_into_the_verl_mapping_whose_yaml_keys_keep_their_dots() -> None:
    cfg = load_config(AlignConfig, VERL_GPU, ["verl.trainer.nnodes=2"])
    assert cfg.verl["trainer"] == {"nnodes": 2}
    assert cfg.verl["actor_rollout_ref.rollout.gpu_memory_utilization"] == 0.6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_generatoins=8", "num_generatoins"),  # a typo is an error, not a silently ignored key
        ("reward_metric=bleurt", "unknown reward_metric 'bleurt'"),
        ("reward_metric=acc", "multiple-choice"),
        ("reward_kwargs={tolerence: 1}", "has no option tolerence"),
        ("verl={trainer.nnodes: 2}", "rl_backend verl only"),
        ("num_generations=1", "num_generations"),
        ("rl_backend=openrlhf", "rl_backend"),
    ],
)
def test_bad_configs_name_the_offending_key(override: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(AlignConfig, SMOLLM2, [override])


def test_verl_trains_with_its_own_fsdp_workers_not_unsloth() -> None:
    with pytest.raises(ValidationError, match="backend must be peft"):
        load_config(AlignConfig, VERL_GPU, ["backend=unsloth"])


def test_verl_config_translates_the_shipped_gpu_config() -> None:
    cfg = load_config(AlignConfig, VERL_GPU)
    out = verl_config(
        cfg,
        train_files="s3://welip-artifacts/align/x/data/train.parquet",
        model_path="/mnt/welip-models/qwen",
        checkpoint_dir="/tmp/ckpt",
        run_name="welip-arith-grpo-verl-abc",
        gpus_per_node=4,
    )
    expected = {
        "algorithm.adv_estimator": "grpo",
        "data.train_files": "s3://welip-artifacts/align/x/data/train.parquet",
        "data.max_prompt_length": cfg.max_prompt_len,
        "data.max_response_length": cfg.max_completion_len,
        "data.train_batch_size": cfg.batch_size * cfg.num_workers,
        "actor_rollout_ref.model.path": "/mnt/welip-models/qwen",
        "actor_rollout_ref.model.lora_rank": cfg.lora_rank,
        "actor_rollout_ref.model.lora_alpha": cfg.lora_alpha,
        "actor_rollout_ref.model.target_modules": cfg.lora_targets,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": cfg.num_generations,
        "actor_rollout_ref.rollout.load_format": "safetensors",
        "actor_rollout_ref.actor.optim.lr": cfg.learning_rate,
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": cfg.beta,
        "trainer.total_training_steps": cfg.max_steps,
        "trainer.n_gpus_per_node": 4,
        "trainer.nnodes": 1,
        "trainer.experiment_name": "welip-arith-grpo-verl-abc",
        "trainer.project_name": cfg.experiment,
        "trainer.default_local_dir": "/tmp/ckpt",
        "trainer.logger": ["console", "mlflow"],
        "custom_reward_function.path": "pkg://welip.training._rewards",
        "custom_reward_function.name": "compute_score",
        "custom_reward_function.reward_kwargs": {"metric": "numeric_match", "tolerance": 0},
    }
    assert {k: out[k] for k in expected} == expected
    # The shipped pass-through keys arrive as written.
    for key, value in cfg.verl.items():
        assert out[key] == value


def test_verl_keys_of_the_config_are_applied_last() -> None:
    cfg = load_config(
        AlignConfig,
        VERL_GPU,
        [
            "verl={actor_rollout_ref.rollout.tensor_model_parallel_size: 2, trainer.logger: [console], "
            "data.max_prompt_length: 1024}"
        ],
    )
    out = verl_config(cfg)
    assert out["actor_rollout_ref.rollout.tensor_model_parallel_size"] == 2
    assert out["trainer.logger"] == ["console"]
    assert out["data.max_prompt_length"] == 1024  # over the translation of max_prompt_len


def test_verl_config_defaults_read_the_config_itself() -> None:
    cfg = load_config(AlignConfig, VERL_GPU, ["mlflow=false", "beta=0", "num_workers=2"])
    out = verl_config(cfg)
    assert out["data.train_files"] == cfg.dataset == out["data.val_files"]
    assert out["actor_rollout_ref.model.path"] == cfg.model
    assert out["trainer.logger"] == ["console"]
    assert out["actor_rollout_ref.actor.use_kl_loss"] is False
    assert (out["trainer.nnodes"], out["trainer.n_gpus_per_node"]) == (1, 2)
    assert out["trainer.experiment_name"] == cfg.name
    # No shared, guessable /tmp path: VeRL's own default unless run_verl names a private one.
    assert "trainer.default_local_dir" not in out


def test_each_verl_run_checkpoints_into_a_fresh_private_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = _new_checkpoint_dir("run-abc"), _new_checkpoint_dir("run-abc")
    assert first != second and Path(first).parent == tmp_path
    assert Path(first).name.startswith("welip-verl-run-abc-")
    _make_private_dir(first)
    assert Path(first).stat().st_mode & 0o777 == 0o700
    _make_private_dir(first)  # this user's own, made by another Ray node of this host: kept
    # Someone else's directory, or a link, is refused rather than trained into.
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    with pytest.raises(FileExistsError):
        _make_private_dir(str(planted))
    (tmp_path / "link").symlink_to(first)
    with pytest.raises(FileExistsError):
        _make_private_dir(str(tmp_path / "link"))


def _adapter(root: Path, step: int) -> None:
    folder = root / f"global_step_{step}" / "actor" / "lora_adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"step %d" % step)


def test_the_adapter_is_fetched_only_from_a_directory_nobody_else_can_write(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir(mode=0o700)
    _adapter(root, 3)
    found = _latest_verl_adapter(str(root))
    assert found is not None and found[0] == 3
    assert _latest_verl_adapter(str(tmp_path / "missing")) is None
    root.chmod(0o777)  # another local user could have planted a later step
    _adapter(root, 999)
    assert _latest_verl_adapter(str(root)) is None


@pytest.mark.parametrize(
    ("workers", "per_node", "nodes", "gpus"), [(8, 4, 2, 4), (4, 8, 1, 4), (1, 8, 1, 1), (16, 8, 2, 8)]
)
def test_verl_config_spreads_gpu_workers_over_whole_nodes(
    workers: int, per_node: int, nodes: int, gpus: int
) -> None:
    cfg = load_config(AlignConfig, VERL_GPU, [f"num_workers={workers}", "batch_size=4"])
    out = verl_config(cfg, gpus_per_node=per_node)
    assert (out["trainer.nnodes"], out["trainer.n_gpus_per_node"]) == (nodes, gpus)
    assert out["data.train_batch_size"] == 4 * workers


def test_verl_config_refuses_workers_that_do_not_fill_nodes() -> None:
    cfg = load_config(AlignConfig, VERL_GPU, ["num_workers=6"])
    with pytest.raises(ValueError, match="do not fill nodes of 4 GPUs"):
        verl_config(cfg, gpus_per_node=4)


def test_verl_micro_batches_divide_the_per_gpu_batch() -> None:
    # VeRL checks ppo_mini_batch_size * n / GPUs is a multiple of the micro batch per GPU.
    cfg = load_config(AlignConfig, VERL_GPU)
    out = verl_config(cfg, gpus_per_node=4)
    gpus = out["trainer.nnodes"] * out["trainer.n_gpus_per_node"]
    per_gpu = out["actor_rollout_ref.actor.ppo_mini_batch_size"] * out["actor_rollout_ref.rollout.n"] // gpus
    assert per_gpu % out["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == 0
    assert out["data.train_batch_size"] * out["actor_rollout_ref.rollout.n"] % gpus == 0


def _verl_installed(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "verl":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_verl_without_the_package_is_refused_before_any_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    _verl_installed(monkeypatch, installed=False)
    with pytest.raises(BackendUnavailable, match=r"needs the verl package.*rl_backend trl"):
        check_align_backend(load_config(AlignConfig, VERL_GPU), cluster_gpus=8)


def test_verl_on_a_cluster_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _verl_installed(monkeypatch, installed=True)
    cfg = load_config(AlignConfig, VERL_GPU)
    with pytest.raises(BackendUnavailable, match="4 GPU workers but the Ray cluster has no GPU"):
        check_align_backend(cfg, cluster_gpus=0)
    with pytest.raises(BackendUnavailable, match="has 2 GPUs"):
        check_align_backend(cfg, cluster_gpus=2)
    check_align_backend(cfg, cluster_gpus=4)  # enough GPUs: no error


def test_verl_on_cpu_workers_is_refused_with_a_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _verl_installed(monkeypatch, installed=True)
    with pytest.raises(BackendUnavailable, match=r"use_gpu=true.*rl_backend trl"):
        check_align_backend(load_config(AlignConfig, VERL_GPU, ["use_gpu=false"]), cluster_gpus=8)


def test_trl_runs_on_cpu_but_not_with_unsloth() -> None:
    check_align_backend(load_config(AlignConfig, SMOLLM2), cluster_gpus=0)
    with pytest.raises(BackendUnavailable, match="backend=peft"):
        check_align_backend(load_config(AlignConfig, SMOLLM2, ["backend=unsloth"]), cluster_gpus=8)


@pytest.mark.skipif(importlib.util.find_spec("verl") is not None, reason="verl is installed")
def test_run_verl_without_verl_raises_backend_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="cannot import VeRL"):
        run_verl(
            load_config(AlignConfig, VERL_GPU),
            train_files="x.parquet",
            adapter_dir=tmp_path,
            run_name="r",
            mlflow_run=None,
        )


def _served_models(manifest_or_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    apps = manifest_or_config["applications"]
    return {m["model_id"]: m for app in apps for m in app["args"].get("models", [])}


def test_shipped_cpu_adapter_can_be_hot_loaded_by_the_local_stack() -> None:
    cfg = load_config(AlignConfig, SMOLLM2)
    served = _served_models(yaml.safe_load((REPO / "configs" / "serve" / "local-lora.yaml").read_text()))
    model = served.get(cfg.base_model_id)
    assert model is not None, "the adapter's base model is not served locally"
    assert model["engine_kwargs"].get("enable_lora"), "the local engine does not load adapters"
    assert cfg.lora_rank <= model["engine_kwargs"]["max_lora_rank"]


def test_shipped_gpu_config_targets_a_model_the_rayservice_serves() -> None:
    cfg = load_config(AlignConfig, VERL_GPU)
    # The Helm chart's GPU profile (kuberay/charts/welip/values-gpu.yaml), rendered.
    objects = render_chart(PROFILES["gpu"])
    served = _served_models(yaml.safe_load(serve_config_of(objects)))
    assert cfg.base_model_id in served
    assert served[cfg.base_model_id]["source"] == cfg.model
