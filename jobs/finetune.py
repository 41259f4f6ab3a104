"""Fine-tune a LoRA adapter with Ray Train, and register it for serving.

    python jobs/finetune.py --config configs/finetune/smollm2_faq.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/finetune.py --config configs/finetune/smollm2_faq.yaml

Steps, top to bottom (welip.training.finetune): check the config against the cluster
(unsloth needs GPUs), render and tokenize the data (bad rows are reported and counted),
open one MLflow run, train on Ray Train workers (checkpoints every N steps; a failed
worker restarts the group from the last checkpoint), copy the adapter (and the merged
model, on request) to storage, register it in MLflow and the catalog, and print where it
went.

Exit codes: 0 done, 1 a backend the cluster cannot run or a missing or unusable dataset,
2 an invalid config.
"""

from welip.job import run_job
from welip.training import BackendUnavailable, FinetuneConfig, finetune

if __name__ == "__main__":
    run_job(
        finetune,
        FinetuneConfig,
        component="finetune",
        doc=__doc__,
        errors=(BackendUnavailable, FileNotFoundError, ValueError),
    )
