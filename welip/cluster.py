"""Joining the Ray cluster from a job entrypoint (``jobs/*.py``)."""

from __future__ import annotations

import os

import ray

__all__ = ["MIN_LOCAL_CPUS", "connect_ray"]

# As `make run` starts Ray: more logical CPUs than a laptop's cores, so a job's light
# stages, in-job engines and actors schedule beside a serving app.
MIN_LOCAL_CPUS = 8


def connect_ray() -> None:
    """Join the cluster (``ray job submit`` sets RAY_ADDRESS; else a running local one), or start one.

    A cluster started here gets at least :data:`MIN_LOCAL_CPUS` logical CPUs.
    """
    if os.environ.get("RAY_ADDRESS"):  # explicit: Ray's token rules apply (export RAY_AUTH_MODE=token)
        ray.init()
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        ray.init(num_cpus=max(os.cpu_count() or 1, MIN_LOCAL_CPUS))
