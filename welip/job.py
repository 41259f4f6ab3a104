"""What every Ray Job entrypoint (``jobs/*.py``) does around its library call.

A job script is a docstring, one library function and one line::

    if __name__ == "__main__":
        run_job(run_suite, SuiteConfig, component="eval", doc=__doc__, errors=(EndpointUnavailable,))

:func:`run_job` parses ``--config PATH [key=value ...]`` (dotted keys, YAML values), writes
JSON log lines with the trace id on stderr, opens the run's root span (exported when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, flushed before the process exits), joins the Ray
cluster, runs the function and prints its summary as JSON on stdout (unless the job prints
its own report). Exit codes: 0 done, 1 a failure the job expects (``errors``: a missing
file, an unreachable endpoint), 2 an invalid config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from welip.cluster import connect_ray
from welip.config import load_config
from welip.observability import configure_job_logging, job_span, trace_id_of

__all__ = ["parse_job_args", "run_job"]

logger = logging.getLogger("welip.jobs")

_C = TypeVar("_C", bound=BaseModel)


def parse_job_args(config_type: type[_C], argv: Sequence[str], *, doc: str | None = None) -> _C:
    """``--config PATH [key=value ...]`` as a validated ``config_type``; exits 2 on an invalid config."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="The job's YAML config (configs/<area>/<name>.yaml).")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides; dotted keys reach into sections (target.model=x)."
    )
    args = parser.parse_args(list(argv))
    try:
        return load_config(config_type, args.config, args.overrides)
    except (OSError, ValueError, ValidationError) as exc:
        parser.exit(2, f"error: invalid config {args.config}: {exc}\n")


def run_job(
    main: Callable[[_C], dict[str, Any]],
    config_type: type[_C],
    *,
    component: str,
    doc: str | None = None,
    errors: tuple[type[Exception], ...] = (),
    print_summary: bool = True,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``main`` as a Ray Job entrypoint and return its summary (see the module's docstring).

    Args:
        main: the library function that does the run; it may add attributes to the current
            span (the run's root span, named ``<component>.run``).
        config_type: the pydantic model of the job's YAML.
        component: the job's name in traces and logs (``eval``, ``finetune``, ``align``, ``ingest``).
        doc: the script's docstring, shown by ``--help``.
        errors: exceptions that end the job with ``error: <message>`` and exit code 1
            instead of a traceback.
        print_summary: print the summary as JSON on stdout (off for a job that prints its
            own report, such as the eval table).
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    configure_job_logging()  # JSON lines on stderr, with the trace id
    cfg = parse_job_args(config_type, sys.argv[1:] if argv is None else argv, doc=doc)
    connect_ray()
    try:
        with job_span(component, f"{component}.run", {"openinference.span.kind": "CHAIN"}) as span:
            summary = main(cfg)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    trace_id = trace_id_of(span)
    if trace_id is not None:  # traced: where to find the run in the trace UI
        summary["trace_id"] = trace_id
        logger.info("trace %s", trace_id)
    if print_summary:
        print(json.dumps(summary, indent=2, default=str))
    return summary
