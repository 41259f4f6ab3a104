"""Align a model with GRPO, rewarded by an evaluation metric, and register the LoRA adapter.

    python jobs/align.py --config configs/align/smollm2_arithmetic.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/align.py --config configs/align/verl_gpu.yaml

Steps, top to bottom (welip.training.align): check the RL backend against the cluster
(verl needs its package and GPUs), read the VeRL-shaped prompts (bad rows are reported and
counted), open one MLflow run, train (trl: TRL's GRPOTrainer on a Ray Train worker group;
verl: VeRL's Ray trainer with vLLM rollouts on the data converted to parquet in storage),
copy the adapter (and the merged model, on request) to storage, register it in MLflow and
the catalog, and print where it went with the mean reward of the first and last steps.

Exit codes: 0 done, 1 a backend the cluster cannot run or a missing or unusable dataset,
2 an invalid config.
"""

from welip.job import run_job
from welip.training import AlignConfig, BackendUnavailable, align

if __name__ == "__main__":
    run_job(
        align,
        AlignConfig,
        component="align",
        doc=__doc__,
        errors=(BackendUnavailable, FileNotFoundError, ValueError),
    )
