"""Ray's private modules that WeLIP uses (Ray 2.60), and why no public API serves instead."""

from __future__ import annotations

# Model multiplexing of LoRA adapters: ray.serve.llm's loader hook hands WeLIP's loader a
# DiskMultiplexConfig and keeps ids unique with its global id manager.
from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

# LLMServer.chat/completions take request info as their second argument; ray.serve.llm
# exports no name for its type. WeLIP puts the W3C traceparent in its headers.
from ray.llm._internal.serve.core.protocol import RawRequestInfo


def enable_token_auth_if_available() -> None:
    """Present the local cluster's auth token to the Job API, as ``ray.init()`` does for a driver.

    Ray has no public call for this; without it ``welip`` job commands are refused by a
    cluster started with token auth (Ray's default when a token exists).
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


__all__ = ["DiskMultiplexConfig", "RawRequestInfo", "enable_token_auth_if_available", "global_id_manager"]
