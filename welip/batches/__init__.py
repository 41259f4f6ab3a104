"""Batch jobs of ``/v1/batches``: each runs one batch's lines through the gateway, over Ray Data.

The gateway (:mod:`welip.gateway`) validates a batch and submits its job; the job
(:func:`main`, ``python -m welip.batches``) sends every line back through the gateway, as
the batch's creator, and stores the output and error files.
"""

from welip.batches._job import BatchNotFound, main, ray_data_execute, run_batch
from welip.batches._lines import LineSender
from welip.batches._settings import API_KEY_ENV, CALLER_TOKEN_ENV, BatchJobSettings

__all__ = [
    "API_KEY_ENV",
    "CALLER_TOKEN_ENV",
    "BatchJobSettings",
    "BatchNotFound",
    "LineSender",
    "main",
    "ray_data_execute",
    "run_batch",
]
