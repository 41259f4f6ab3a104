"""GRPO alignment rewarded by an evaluation metric: TRL on a Ray Train worker group, or VeRL on GPUs.

The reward is an evaluation metric of the answer against the row's ground truth
(:mod:`welip.training._rewards`), the same function in both backends: ``trl`` runs TRL's
``GRPOTrainer`` in Ray Train workers (:mod:`welip.training._grpo`), ``verl`` runs VeRL's
Ray trainer with vLLM rollouts (:mod:`welip.training._verl`). Rows are VeRL's
(:mod:`welip.training._align_data`).
"""

from __future__ import annotations

import importlib.util
import logging

from welip.training._config import AlignConfig
from welip.training._model import BackendUnavailable, check_backend

logger = logging.getLogger("welip.align")


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
