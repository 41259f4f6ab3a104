"""Model sources: packaged models, local HF-format dirs and ``s3://`` URIs.

Nothing here downloads from a model hub: packaged models come from PyPI packages
installed beside WeLIP and are converted once into a local cache.
"""

from welip.models._prepare import (
    PACKAGED_MODELS,
    PackagedModel,
    default_cache_dir,
    prepare_model,
    resolve_model_path,
)

__all__ = [
    "PACKAGED_MODELS",
    "PackagedModel",
    "default_cache_dir",
    "prepare_model",
    "resolve_model_path",
]
