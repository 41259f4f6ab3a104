"""Fine-tune configs: flat YAML, overrides, and the errors a user sees before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from welip.config import load_config
from welip.training import BackendUnavailable, FinetuneConfig, check_backend

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "configs" / "finetune" / "smollm2_faq.yaml"


def test_overrides_change_single_keys_with_yaml_values() -> None:
    cfg = load_config(FinetuneConfig, SHIPPED, ["max_steps=3", "lora_targets=[q_proj]", "merge=true"])
    assert (cfg.max_steps, cfg.lora_targets, cfg.merge) == (3, ["q_proj"], True)
    assert cfg.name == "welip-faq"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora_rnak=8", "lora_rnak"),  # a typo is an error, not a silently ignored key
        ("lora_rank=0", "lora_rank"),
        ("backend=deepspeed", "backend"),
        ("name=Has Spaces", "name"),
        ("lora_targets=['q_proj; rm -rf']", "not a module name"),
    ],
)
def test_bad_configs_name_the_offending_key(override: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_config(FinetuneConfig, SHIPPED, [override])


def test_a_malformed_override_is_refused() -> None:
    with pytest.raises(ValueError, match="key=value"):
        load_config(FinetuneConfig, SHIPPED, ["max_steps"])


def test_unsloth_without_gpus_is_refused_with_a_way_out() -> None:
    cfg = load_config(FinetuneConfig, SHIPPED, ["backend=unsloth"])
    with pytest.raises(BackendUnavailable, match=r"GPUs only.*backend peft"):
        check_backend(cfg, cluster_gpus=0)
    gpu = load_config(FinetuneConfig, SHIPPED, ["backend=unsloth", "use_gpu=true", "num_workers=2"])
    with pytest.raises(BackendUnavailable, match="2 GPU workers but the Ray cluster has no GPU"):
        check_backend(gpu, cluster_gpus=0)
    check_backend(gpu, cluster_gpus=2)  # enough GPUs: no error
    check_backend(load_config(FinetuneConfig, SHIPPED), cluster_gpus=0)  # peft on CPU: fine


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "finetune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_train_on_shipped_data_for_a_model_served_with_lora(path: Path) -> None:
    import yaml

    from welip.gateway import ServingConfig

    cfg = load_config(FinetuneConfig, path)
    assert (REPO / cfg.dataset).is_file()
    serve = yaml.safe_load((REPO / "configs" / "serve" / "local-lora.yaml").read_text())
    served = ServingConfig.model_validate(serve["applications"][0]["args"])
    lora_models = {m.model_id: m for m in served.models if m.lora is not None}
    assert cfg.base_model_id in lora_models, "the adapter could not be hot-loaded by the local stack"
    assert cfg.lora_rank <= lora_models[cfg.base_model_id].engine_kwargs["max_lora_rank"]
