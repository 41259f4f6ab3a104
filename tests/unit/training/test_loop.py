"""What the driver hands Ray Train workers: a plain dict at Ray's boundary, typed on both sides."""

from __future__ import annotations

from welip.training import MlflowRun
from welip.training._loop import LoopInputs


def test_loop_inputs_cross_ray_as_a_plain_dict_and_come_back_equal() -> None:
    inputs = LoopInputs(
        config={"name": "faq"},
        data="object-ref",
        total_steps=12,
        mlflow_run=MlflowRun("run-1", "sqlite:///mlflow.db"),
        trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    sent = inputs.to_ray()
    assert sent == {
        "config": {"name": "faq"},
        "data": ["object-ref"],
        "total_steps": 12,
        "mlflow_run_id": "run-1",
        "mlflow_uri": "sqlite:///mlflow.db",
        "trace_context": inputs.trace_context,
    }
    assert LoopInputs.from_ray(sent) == inputs


def test_an_untracked_run_hands_no_mlflow_run() -> None:
    inputs = LoopInputs(config={}, data="object-ref", total_steps=1)
    assert inputs.to_ray()["mlflow_run_id"] is None
    assert LoopInputs.from_ray(inputs.to_ray()) == inputs
