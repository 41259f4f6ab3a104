"""What the driver hands every Ray Train worker of a run (``train_loop_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from welip.training._registry import MlflowRun


@dataclass(frozen=True)
class LoopInputs:
    """The inputs of a per-worker training loop (:func:`sft_loop`, :func:`grpo_loop`).

    Ray Train takes a plain dict: :meth:`to_ray` builds it in the driver and
    :meth:`from_ray` reads it back in each worker.
    """

    config: dict[str, Any]
    """The job's config as JSON; the worker validates it again."""
    data: Any
    """An ``ObjectRef`` of the rows: in the object store once, read by every worker."""
    total_steps: int
    """Optimizer steps of the run."""
    mlflow_run: MlflowRun | None = None
    """The driver's MLflow run, which rank 0 logs into; None when the run is not tracked."""
    trace_context: dict[str, str] | None = None
    """The job's span as a W3C carrier: each worker's step spans go under it."""

    def to_ray(self) -> dict[str, Any]:
        """The ``train_loop_config`` dict."""
        return {
            "config": self.config,
            "data": [self.data],
            "total_steps": self.total_steps,
            "mlflow_run_id": self.mlflow_run.run_id if self.mlflow_run else None,
            "mlflow_uri": self.mlflow_run.tracking_uri if self.mlflow_run else None,
            "trace_context": self.trace_context,
        }

    @classmethod
    def from_ray(cls, loop_config: dict[str, Any]) -> LoopInputs:
        """The inputs a worker received from :meth:`to_ray`."""
        run_id, uri = loop_config.get("mlflow_run_id"), loop_config.get("mlflow_uri")
        return cls(
            config=loop_config["config"],
            data=loop_config["data"][0],
            total_steps=int(loop_config["total_steps"]),
            mlflow_run=MlflowRun(run_id, uri) if run_id and uri else None,
            trace_context=loop_config.get("trace_context"),
        )
