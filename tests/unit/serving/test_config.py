import pytest
from pydantic import ValidationError

from welip.gateway import ServingConfig
from welip.serving import ModelConfig, build_llm_config


def _model(**overrides: object) -> dict:
    model = {"model_id": "smollm2-135m-instruct", "source": "smollm2-135m-instruct"}
    model.update(overrides)
    return model


def test_minimal_config_gets_documented_defaults() -> None:
    config = ServingConfig.model_validate({"models": [_model()]})
    assert config.models[0].accelerator == "cpu"
    assert config.gateway.num_replicas == 1
    assert 0 < config.gateway.num_cpus < 1


@pytest.mark.parametrize(
    "args",
    [
        {"models": []},
        {"models": [_model(), _model()]},
        {"models": [_model(engine="vllm")]},
        {"models": [_model(cpus_per_replica=0)]},
        {"models": [_model(kv_cache_space_gib=0.5)]},
        {"models": [_model(model_id="bad id with spaces")]},
        {"models": [_model(accelerator="tpu")]},
        {"models": [_model(accelerator="gpu", kv_cache_space_gib=2)]},
        {"models": [_model(autoscaling={"min_replicas": 3, "max_replicas": 1})]},
        {"models": [_model()], "gateway": {"num_replicas": 0}},
        {"models": [_model()], "gateway": {"typo": 1}},
    ],
)
def test_invalid_configs_are_rejected(args: dict) -> None:
    with pytest.raises(ValidationError):
        ServingConfig.model_validate(args)


def test_cpu_engine_gets_one_cpu_bundle_and_its_kv_cache_env() -> None:
    model = ModelConfig.model_validate(
        _model(
            cpus_per_replica=1,
            kv_cache_space_gib=2,
            engine_kwargs={"enforce_eager": True, "max_model_len": 512},
        )
    )
    llm = build_llm_config(model)
    assert llm.placement_group_config["bundles"] == [{"CPU": 1}]
    assert llm.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert llm.engine_kwargs == {"enforce_eager": True, "max_model_len": 512}
    assert llm.model_id == "smollm2-135m-instruct"
    assert llm.deployment_config["num_replicas"] == 1


def test_gpu_engine_gets_one_gpu_bundle_per_gpu_and_autoscaling() -> None:
    model = ModelConfig.model_validate(
        _model(
            accelerator="gpu",
            gpus_per_replica=2,
            engine_kwargs={"tensor_parallel_size": 2},
            autoscaling={"min_replicas": 1, "max_replicas": 4},
        )
    )
    llm = build_llm_config(model)
    assert llm.placement_group_config["bundles"] == [{"GPU": 1, "CPU": 1}, {"GPU": 1, "CPU": 1}]
    assert llm.deployment_config["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in llm.deployment_config
    assert llm.runtime_env is None


def test_lora_needs_vllm_lora_support_and_reaches_ray_serve_llm() -> None:
    with pytest.raises(ValidationError, match=r"set engine_kwargs\.enable_lora"):
        ModelConfig.model_validate(_model(lora={}))
    model = ModelConfig.model_validate(
        _model(lora={"max_adapters_per_replica": 3}, engine_kwargs={"enable_lora": True, "max_lora_rank": 16})
    )
    llm = build_llm_config(model)
    assert llm.lora_config is not None and llm.lora_config.max_num_adapters_per_replica == 3
    assert llm.engine_kwargs["max_lora_rank"] == 16
    assert build_llm_config(ModelConfig.model_validate(_model())).lora_config is None
