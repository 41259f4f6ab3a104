"""Evaluate a model on a suite: a Ray Job over Ray Data.

    python jobs/evaluate.py --config configs/eval/arithmetic.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval/arithmetic.yaml

Steps, top to bottom (welip.evaluation.run_suite): read and render the suite (bad rows
are reported and counted), check that every endpoint answers (fail fast), run inference
(an OpenAI-compatible endpoint, or vLLM inside the job), score with the rule-based
metrics, judge, then write samples and summary to storage, log an MLflow run and an
``eval_runs`` row, and print the summary table.

Exit codes: 0 done, 1 an endpoint that does not answer, 2 an invalid suite.
"""

from welip.evaluation import EndpointUnavailable, SuiteConfig, run_suite
from welip.job import run_job

if __name__ == "__main__":
    # run_suite() prints the summary table (welip promote shows it as the gate runs).
    run_job(
        run_suite,
        SuiteConfig,
        component="eval",
        doc=__doc__,
        errors=(EndpointUnavailable,),
        print_summary=False,
    )
