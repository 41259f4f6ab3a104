"""What every WeLIP configuration shares: one strict base model and one YAML loader.

Each concern keeps its own config model beside its code (``welip.trust.TrustConfig``,
``welip.evaluation.SuiteConfig``, ...); they all derive from :class:`StrictModel` and
load through :func:`load_config`.
"""

from welip.config._base import StrictModel
from welip.config._load import apply_overrides, load_config

__all__ = ["StrictModel", "apply_overrides", "load_config"]
